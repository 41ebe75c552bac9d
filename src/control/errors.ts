/**
 * The control API's one error shape, `{"error": {"code", "message", "details"}}`, and the handlers that
 * produce it for every failure: thrown ApiErrors, schema validation, body parsing, unknown routes.
 */
import { Type, type Static } from '@sinclair/typebox';
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';

export const FieldProblem = Type.Object({
  field: Type.String({ description: 'where: body.email, query.limit, params.id, header.x-tern-tenant' }),
  message: Type.String(),
});
export type FieldProblem = Static<typeof FieldProblem>;

export const ErrorBody = Type.Object(
  {
    error: Type.Object({
      code: Type.String({ description: 'stable, machine-readable: invalid_request, unauthorized, forbidden, not_found, conflict, rate_limited, …' }),
      message: Type.String({ description: 'a sentence saying what went wrong and what to do' }),
      details: Type.Array(FieldProblem, { description: 'per-field problems (validation); empty otherwise' }),
    }),
  },
  { title: 'Error' },
);

export class ApiError extends Error {
  constructor(
    readonly statusCode: number,
    readonly code: string,
    message: string,
    readonly details: FieldProblem[] = [],
    /** response headers that go with it (Retry-After) */
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

export const notFound = (what: string) => new ApiError(404, 'not_found', `${what} does not exist`);
export const badRequest = (message: string, details: FieldProblem[] = []) => new ApiError(400, 'invalid_request', message, details);
export const conflict = (message: string) => new ApiError(409, 'conflict', message);

export function sendError(reply: FastifyReply, err: ApiError): FastifyReply {
  for (const [k, v] of Object.entries(err.headers)) reply.header(k, v);
  return reply.code(err.statusCode).send({ error: { code: err.code, message: err.message, details: err.details } });
}

/** Fastify's own errors (body parsing, limits) as ApiErrors; anything else is a 500. */
export function toApiError(err: FastifyError & { validation?: AjvProblem[]; validationContext?: string }): ApiError {
  if (err instanceof ApiError) return err;
  if (err.validation) {
    const details = err.validation.map((v) => ({ field: `${contextName(err.validationContext)}${v.instancePath.replace(/\//g, '.')}${v.params?.missingProperty ? `.${v.params.missingProperty}` : ''}`, message: v.message ?? 'is invalid' }));
    return badRequest(`The request is invalid: ${details.map((d) => `${d.field} ${d.message}`).join('; ')}`, details);
  }
  switch (err.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new ApiError(413, 'payload_too_large', 'The request body is larger than this route takes');
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new ApiError(415, 'unsupported_media_type', 'Send the body as JSON with "Content-Type: application/json"');
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return badRequest('The request has "Content-Type: application/json" but an empty body');
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
      return badRequest('The request body is not valid JSON');
  }
  if (err.statusCode === 400 && err instanceof SyntaxError) return badRequest('The request body is not valid JSON');
  if (err.statusCode && err.statusCode >= 400 && err.statusCode < 500) return new ApiError(err.statusCode, 'invalid_request', err.message);
  return new ApiError(500, 'internal', 'The request failed on the node; see its log');
}

interface AjvProblem {
  instancePath: string;
  message?: string;
  params?: { missingProperty?: string };
}

const contextName = (c: string | undefined) => (c === 'querystring' ? 'query' : c === 'headers' ? 'header' : (c ?? 'body'));

export function errorHandler(err: FastifyError, req: FastifyRequest, reply: FastifyReply) {
  const apiError = toApiError(err);
  if (apiError.statusCode >= 500) req.log.error({ err }, 'control API request failed');
  return sendError(reply, apiError);
}

export function notFoundHandler(req: FastifyRequest, reply: FastifyReply) {
  return sendError(reply, new ApiError(404, 'not_found', `No route ${req.method} ${req.url.split('?')[0]}; the routes are listed in /api/v1/openapi.json`));
}
