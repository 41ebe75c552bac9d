/** Pieces every resource plugin of the control API uses. */
import { Type, type TSchema } from '@sinclair/typebox';
import type { FastifyRequest } from 'fastify';
import type { Tx } from '../../core/store.js';
import type { ControlApiDeps } from '../api.js';
import type { AuditInput } from '../audit.js';
import { originOf } from '../auth.js';

export type RouteDeps = ControlApiDeps;

export const Nullable = <T extends TSchema>(s: T) => Type.Union([s, Type.Null()]);
export const Epoch = (description: string) => Type.Integer({ description: `${description} (epoch ms)` });
export const NoContent = Type.Null({ description: 'Done; no content' });
export const IdParams = Type.Object({ id: Type.String({ minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9_-]+$', description: 'an id as the API gave it' }) });

export const strict = <T extends Record<string, TSchema>>(props: T, opts: { description?: string; minProperties?: number } = {}) =>
  Type.Object(props, { additionalProperties: false, ...opts });

/** Applies a change with its audit entry (who, from where: the request) in one transaction; resolves when durable. */
export function mutate<T>(deps: RouteDeps, req: FastifyRequest, run: (tx: Tx) => T, describe: (result: T) => AuditInput | null): Promise<T> {
  return deps.plane.change(originOf(req), run, describe);
}

/** The base URL for links in account mail: control.public_url, else the listener's own address. */
export function publicUrl(deps: RouteDeps, req: FastifyRequest): string {
  if (deps.plane.settings.publicUrl) return deps.plane.settings.publicUrl;
  // never the Host header: a forged one would send reset links to someone else's site
  const addr = req.server.server.address();
  if (addr && typeof addr === 'object') return `http://${addr.family === 'IPv6' ? `[${addr.address}]` : addr.address}:${addr.port}`;
  return 'http://localhost';
}
