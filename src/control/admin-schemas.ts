/**
 * Schemas of the listener's first routes (health, metrics and the operator's shaping, backoff, warmup and
 * reload routes in server.ts), so that they are validated and appear in the OpenAPI document like the rest.
 */
import { Type } from '@sinclair/typebox';

const Any = (description: string) => Type.Object({}, { additionalProperties: true, description });
const SourceParams = Type.Object({ source: Type.String({ minLength: 1, maxLength: 253 }) });

export const adminSchemas = {
  health: { summary: 'Liveness: queued recipients and memory use (no credentials)', response: { 200: Any('ok, queued_recipients, recipients_in_memory, memory_mb'), 503: Any('not ok') } },
  metrics: { summary: 'Prometheus metrics (text exposition format; no credentials)', produces: ['text/plain'] },
  explainShaping: {
    summary: 'The shaping settings that apply to mail for a domain from an egress source, each with the layer it came from, and the MTA-STS policy',
    tags: ['shaping'],
    querystring: Type.Object({ domain: Type.String({ minLength: 1, maxLength: 253, description: 'e.g. example.com' }), source: Type.Optional(Type.String({ minLength: 1, maxLength: 253 })) }, { additionalProperties: false }),
    response: { 200: Any('domain, source, site, route, provider, settings {value, from}, mta_sts') },
  },
  backoffList: { summary: 'Running backoff actions (adaptive throttles and suspensions)', tags: ['shaping'], response: { 200: Type.Object({ actions: Type.Array(Any('a backoff action')) }) } },
  backoffClear: { summary: 'Ends a backoff action', tags: ['shaping'], params: Type.Object({ id: Type.String({ minLength: 1, maxLength: 200 }) }), response: { 204: Type.Null() } },
  warmupList: { summary: 'Warmup state of every source on a plan', tags: ['warmup'], response: { 200: Type.Object({ sources: Type.Array(Any('day, cap, sent today, per provider')) }) } },
  warmupOne: { summary: 'Warmup state of one source', tags: ['warmup'], params: SourceParams, response: { 200: Any('day, cap, sent today, per provider') } },
  reload: { summary: 'Re-reads the shaping file (422 with the problems when it is invalid; the rules in force stay)', tags: ['shaping'], response: { 200: Any('ok, file'), 422: Any('ok: false, problems') } },
};
