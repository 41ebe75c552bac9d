/**
 * HTTP sending: `POST /api/v1/messages` (fields → a MIME message per recipient, Liquid substitutions, the
 * text part from the HTML) and `POST /api/v1/messages/raw` (an RFC 5322 message and its envelope). Both go
 * through the node's acceptance pipeline (src/mta/acceptance.ts) exactly as SMTP submission does, and answer
 * 202 only once the spool commit is durable, with each recipient's status: queued (with its index in the
 * message), suppressed (from the tenant's list) or rejected (not a mail address; not sent). Every refusal is
 * a 4xx with nothing stored.
 */
import { Type, type Static } from '@sinclair/typebox';
import type { FastifyPluginAsync, FastifyRequest } from 'fastify';
import { isMailbox } from '../validate.js';
import { useTypeBox } from '../api.js';
import { allow, tenantOf } from '../auth.js';
import { ApiError, ErrorBody, type FieldProblem } from '../errors.js';
import { ComposeProblem, composeMessages, headerProblem, type SendRequest } from '../compose.js';
import type { Accepted } from '../../mta/acceptance.js';
import { Mailbox, OneLine } from '../validate.js';
import { strict, type RouteDeps } from './common.js';

/** the largest request body these routes take (the API's default is fastify's 1 MB) */
export const SEND_BODY_LIMIT = 10 * 1024 * 1024;
export const MAX_RECIPIENTS = 1000;

const Name = OneLine(200, { description: 'display name (one line)' });
const Party = strict({ email: Mailbox(), name: Type.Optional(Name) });
const Substitution = Type.Union([Type.String({ maxLength: 10_000 }), Type.Number(), Type.Boolean(), Type.Null()]);
const Recipient = strict({
  // checked per recipient: an invalid one is rejected in the answer, the others are sent
  email: Type.String({ minLength: 1, maxLength: 320, description: 'the address; one that is not valid is answered "rejected" and not sent' }),
  name: Type.Optional(Name),
  substitutions: Type.Optional(Type.Record(Type.String({ pattern: '^[A-Za-z_][A-Za-z0-9_]{0,63}$' }), Substitution, { description: 'Liquid variables of this recipient ({{ first_name }}); email and name are set too', maxProperties: 100 })),
});
const Campaign = Type.String({ pattern: '^[A-Za-z0-9._-]{1,64}$', description: 'letters, digits, ".", "_" or "-", at most 64 (as X-Tern-Campaign)' });
const IdempotencyKey = Type.String({ pattern: '^[\\x21-\\x7e]{1,128}$', description: 'printable ASCII, at most 128: a replay within 24 h answers the first result' });
const Tags = Type.Array(OneLine(100), { maxItems: 20, description: 'kept with the message\'s accepted event' });
const Metadata = Type.Record(Type.String({ pattern: '^[A-Za-z0-9_.-]{1,64}$' }), Type.String({ format: 'one-line', maxLength: 1000 }), { maxProperties: 50, description: 'kept with the message\'s accepted event' });
const Stream = Type.Union([Type.Literal('marketing'), Type.Literal('transactional')], { description: 'the stream (Feedback-ID, List-Unsubscribe); default: the tenant\'s' });

export const SendBody = strict({
  from: Party,
  reply_to: Type.Optional(Party),
  to: Type.Array(Recipient, { minItems: 1, maxItems: MAX_RECIPIENTS }),
  subject: OneLine(998, { description: 'one line; Liquid' }),
  html: Type.Optional(Type.String({ minLength: 1, description: 'Liquid; substitutions are HTML-escaped (write {{ x | raw }} for markup)' })),
  text: Type.Optional(Type.String({ minLength: 1, description: 'Liquid; made from html when absent' })),
  headers: Type.Optional(Type.Record(Type.String(), Type.String(), { maxProperties: 50, description: 'more header fields; not From, To, Subject, Message-ID, DKIM-Signature, MIME or X-Tern-* ones' })),
  tags: Type.Optional(Tags),
  metadata: Type.Optional(Metadata),
  campaign: Type.Optional(Campaign),
  stream: Type.Optional(Stream),
  tracking: Type.Optional(Type.Boolean({ description: 'open/click tracking for this message (when the node tracks); default: the tenant\'s setting' })),
  idempotency_key: Type.Optional(IdempotencyKey),
});

export const RawBody = strict({
  mail_from: Mailbox({ description: 'the envelope sender' }),
  rcpt_to: Type.Array(Type.String({ minLength: 1, maxLength: 320 }), { minItems: 1, maxItems: MAX_RECIPIENTS }),
  message: Type.String({ minLength: 1, description: 'the RFC 5322 message; lines may end with LF or CRLF (LF becomes CRLF); a bare CR or NUL is refused' }),
  encoding: Type.Optional(Type.Union([Type.Literal('utf8'), Type.Literal('base64')], { description: 'of message; default utf8' })),
  tags: Type.Optional(Tags),
  metadata: Type.Optional(Metadata),
  stream: Type.Optional(Stream),
  tracking: Type.Optional(Type.Boolean({ description: 'open/click tracking, unless the message says (X-Tern-Track)' })),
  idempotency_key: Type.Optional(IdempotencyKey),
});

const RecipientStatus = Type.Object({
  email: Type.String(),
  status: Type.Union([Type.Literal('queued'), Type.Literal('suppressed'), Type.Literal('rejected')]),
  index: Type.Optional(Type.Integer({ description: 'queued: the recipient\'s index in the message (GET /api/v1/messages/{id})' })),
  reason: Type.Optional(Type.String({ description: 'suppressed: why it is on the list; rejected: what is wrong with the address' })),
});
const SendAnswer = Type.Object(
  {
    queue_id: Type.String({ description: 'the message (GET /api/v1/messages/{queue_id})' }),
    message_id: Type.String({ description: 'the Message-ID header' }),
    recipients: Type.Array(RecipientStatus, { description: 'in the order given' }),
  },
  { title: 'SendResult' },
);
type SendAnswer = Static<typeof SendAnswer>;

const SEND_RESPONSES = {
  202: SendAnswer,
  409: { ...ErrorBody, description: 'The idempotency key was used in the last 24 hours with another request' },
  413: { ...ErrorBody, description: 'The body is over 10 MB' },
  422: { ...ErrorBody, description: 'No recipient is a valid address, or the message was refused (its reason says why)' },
};

/** LF-only (or mixed) line ends to CRLF; a CR not followed by LF stays, for preparation to refuse. */
export const toCrlf = (raw: Buffer): Buffer => Buffer.from(raw.toString('latin1').replace(/\r?\n/g, '\r\n'), 'latin1');

const nonAscii = /[^\x00-\x7f]/;

export const sendingRoutes: FastifyPluginAsync<RouteDeps> = async (app, deps) => {
  useTypeBox(app);
  const SENDERS = allow('owner', 'admin', 'marketer');
  const { acceptance, idempotency } = deps.http;

  /** Runs a send once per idempotency key; the answer (first or replayed) goes out with its status. */
  const idempotent = async (req: FastifyRequest, key: string | undefined, send: () => Promise<SendAnswer>) => {
    const call = async () => ({ status: 202, answer: await send() });
    if (!key) return call();
    const r = await idempotency.once(tenantOf(req), key, req.body, call);
    if (r.kind === 'conflict') throw new ApiError(409, 'idempotency_conflict', `The idempotency key ${JSON.stringify(key)} was used in the last 24 hours with another request; use a new key for a new message`);
    if (r.kind === 'new') throw new Error('unreachable');
    return { status: r.status, answer: r.answer };
  };

  /** The common part: tenant policy, acceptance, and the answer's recipients (rejected ones in place). */
  const accept = async (
    req: FastifyRequest,
    all: string[],
    rejected: Map<number, string>,
    submission: { sender: string; raw: Buffer | Buffer[]; utf8: boolean; stream?: 'marketing' | 'transactional'; tags?: string[]; metadata?: Record<string, string> },
  ): Promise<SendAnswer> => {
    const tenant = tenantOf(req);
    const valid = all.map((_, i) => i).filter((i) => !rejected.has(i));
    const refusal = deps.plane.tenants.refusal(tenant, valid.length);
    if (refusal) throw new ApiError(refusal.http.status, refusal.http.code, refusal.http.message);
    const p = req.principal!;
    const result = await acceptance.accept({
      tenant,
      sender: submission.sender,
      recipients: valid.map((i) => all[i]!),
      raw: submission.raw,
      utf8: submission.utf8,
      listener: 'http',
      client: req.ip,
      user: p.name ?? p.id,
      stream: submission.stream,
      tags: submission.tags,
      metadata: submission.metadata,
    });
    if (!result.ok) {
      switch (result.step) {
        case 'content':
          throw new ApiError(422, 'message_refused', `The message was refused: ${result.reason}`);
        case 'sender_domain':
        case 'quota':
          throw new ApiError(result.refusal.http.status, result.refusal.http.code, result.refusal.http.message);
        case 'spool':
          throw new ApiError(503, 'not_stored', `${result.reason}`, [], { 'retry-after': '5' });
      }
    }
    return answerOf(result, all, rejected);
  };

  app.post<{ Body: Static<typeof SendBody> }>(
    '/messages',
    {
      onRequest: SENDERS,
      bodyLimit: SEND_BODY_LIMIT,
      schema: { summary: 'Send a message (202 once it is durably queued; 413 past 10 MB)', body: SendBody, response: SEND_RESPONSES },
    },
    async (req, reply) => {
      const body = req.body;
      const problems = requestProblems(body);
      if (problems.length) throw new ApiError(400, 'invalid_request', `The request is invalid: ${problems.map((d) => `${d.field} ${d.message}`).join('; ')}`, problems);
      const rejected = rejectedRecipients(body.to.map((r) => r.email), 'to', (i) => `body.to[${i}].email`);
      const { status, answer } = await idempotent(req, body.idempotency_key, async () => {
        const valid = body.to.map((_, i) => i).filter((i) => !rejected.has(i));
        let composed;
        try {
          composed = await composeMessages(body as SendRequest, valid, deps.http.hostname);
        } catch (err) {
          if (err instanceof ComposeProblem) throw new ApiError(400, 'invalid_request', `The request is invalid: ${err.field} ${err.message}`, [{ field: err.field, message: err.message }]);
          throw err;
        }
        const utf8 = [body.from.email, body.reply_to?.email ?? '', ...valid.map((i) => body.to[i]!.email)].some((a) => nonAscii.test(a));
        return accept(req, body.to.map((r) => r.email), rejected, {
          sender: body.from.email,
          raw: composed.personal ? composed.messages : composed.messages[0]!,
          utf8,
          stream: body.stream,
          tags: body.tags,
          metadata: body.metadata,
        });
      });
      return reply.code(status).send(answer);
    },
  );

  app.post<{ Body: Static<typeof RawBody> }>(
    '/messages/raw',
    {
      onRequest: SENDERS,
      bodyLimit: SEND_BODY_LIMIT,
      schema: { summary: 'Send an RFC 5322 message with its envelope (202 once durably queued)', body: RawBody, response: SEND_RESPONSES },
    },
    async (req, reply) => {
      const body = req.body;
      const rejected = rejectedRecipients(body.rcpt_to, 'rcpt_to', (i) => `body.rcpt_to[${i}]`);
      const { status, answer } = await idempotent(req, body.idempotency_key, async () => {
        const decoded = body.encoding === 'base64' ? Buffer.from(body.message, 'base64') : Buffer.from(body.message, 'utf8');
        const normalised = toCrlf(decoded);
        let raw = Buffer.allocUnsafeSlow(normalised.length);
        normalised.copy(raw);
        if (body.tracking !== undefined && !/^x-tern-track:/im.test(normalised.subarray(0, Math.max(0, normalised.indexOf('\r\n\r\n'))).toString('latin1'))) {
          const withHeader = Buffer.concat([Buffer.from(`X-Tern-Track: ${body.tracking ? 'on' : 'off'}\r\n`), normalised]);
          raw = Buffer.allocUnsafeSlow(withHeader.length);
          withHeader.copy(raw);
        }
        const utf8 = [body.mail_from, ...body.rcpt_to].some((a) => nonAscii.test(a)) || nonAscii.test(decoded.toString('latin1'));
        return accept(req, body.rcpt_to, rejected, { sender: body.mail_from, raw, utf8, stream: body.stream, tags: body.tags, metadata: body.metadata });
      });
      return reply.code(status).send(answer);
    },
  );
};

/** Checks of a send request beyond its schema: custom header names and values, Reply-To. */
export function requestProblems(body: Pick<SendRequest, 'headers' | 'html' | 'text'>): FieldProblem[] {
  const out: FieldProblem[] = [];
  for (const [name, value] of Object.entries(body.headers ?? {})) {
    const problem = headerProblem(name, value);
    if (problem) out.push({ field: `body.headers.${name.replace(/[^\x20-\x7e]/g, '?').slice(0, 80)}`, message: problem });
  }
  if (body.html === undefined && body.text === undefined) out.push({ field: 'body.html', message: 'or body.text is required: a message needs a body' });
  for (const f of ['html', 'text'] as const) if (body[f]?.includes('\u0000')) out.push({ field: `body.${f}`, message: 'has a NUL character; NUL is not allowed in mail' });
  return out;
}

/** The recipients that are not mail addresses, with why; all of them → 422 and nothing stored. */
function rejectedRecipients(addresses: string[], field: string, where: (i: number) => string): Map<number, string> {
  const rejected = new Map<number, string>();
  addresses.forEach((a, i) => {
    if (!isMailbox(a)) rejected.set(i, 'not a valid mail address');
  });
  if (rejected.size === addresses.length)
    throw new ApiError(422, 'no_valid_recipients', `No recipient in ${field} is a valid mail address; nothing was sent`, [...rejected].slice(0, 20).map(([i, reason]) => ({ field: where(i), message: `is ${reason}` })));
  return rejected;
}

function answerOf(result: Accepted, all: string[], rejected: Map<number, string>): SendAnswer {
  let next = 0;
  return {
    queue_id: result.queueId,
    message_id: result.messageId,
    recipients: all.map((email, i) => {
      const reason = rejected.get(i);
      if (reason) return { email, status: 'rejected' as const, reason };
      const s = result.recipients[next++]!;
      return s.status === 'queued' ? { email, status: 'queued' as const, index: s.index } : { email, status: 'suppressed' as const, reason: s.reason };
    }),
  };
}
