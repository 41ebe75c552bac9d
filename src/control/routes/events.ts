/**
 * A tenant's events: `GET /api/v1/events?type=&rcpt=&campaign=&since=&until=&order=&limit=&cursor=`, read from
 * the events outbox (the one every state change writes), keeping the events whose `tenant` is the caller's.
 *
 * The outbox is one log for all tenants, ordered by sequence number, so a filter costs a scan. The scan is
 * bounded: `since`/`until` are found by binary search on the log (events are written in time order), and one
 * request reads at most SCAN_LIMIT events; a page can then hold fewer than `limit` items (even none) with a
 * `next_cursor` to go on from. `next_cursor` is null only when the range is exhausted.
 */
import { Type, type Static } from '@sinclair/typebox';
import type { FastifyPluginAsync } from 'fastify';
import type { Store, TernEvent } from '../../core/store.js';
import { useTypeBox } from '../api.js';
import { allow, tenantOf } from '../auth.js';
import { badRequest } from '../errors.js';
import { Page, PageQuery, decodeCursor, encodeCursor, isNumber } from '../pagination.js';
import { strict, type RouteDeps } from './common.js';

export const SCAN_LIMIT = 5000;
const CHUNK = 500;

const TIME_PATTERN = '^(\\d{1,15}|\\d{4}-\\d{2}-\\d{2}([T ]\\d{2}:\\d{2}(:\\d{2}(\\.\\d{1,9})?)?(Z|[+-]\\d{2}:?\\d{2})?)?)$';
const Time = (what: string) => Type.String({ pattern: TIME_PATTERN, description: `${what}: epoch milliseconds or an ISO 8601 date or time, like 2026-11-21T10:00:00Z` });

const EventsQuery = strict({
  type: Type.Optional(Type.String({ pattern: '^[a-z_]{1,40}(,[a-z_]{1,40}){0,19}$', description: 'event types, comma-separated: accepted, delivered, deferred, failed, expired, suppressed, …' })),
  rcpt: Type.Optional(Type.String({ minLength: 1, maxLength: 254, description: 'a recipient address (case-insensitive)' })),
  campaign: Type.Optional(Type.String({ minLength: 1, maxLength: 64 })),
  since: Type.Optional(Time('events at or after')),
  until: Type.Optional(Type.String({ pattern: TIME_PATTERN, description: 'events before: epoch milliseconds or an ISO 8601 date or time' })),
  order: Type.Optional(Type.Union([Type.Literal('desc'), Type.Literal('asc')], { default: 'desc', description: 'desc: newest first (default); asc: oldest first' })),
  ...PageQuery,
});

const EventView = Type.Object(
  {
    seq: Type.Integer({ description: 'position in the events log' }),
    at: Type.Integer({ description: 'epoch ms' }),
    type: Type.String(),
    tenant: Type.String(),
  },
  { additionalProperties: true, title: 'Event', description: 'the event as recorded: queue_id, campaign, rcpt, response, … by type' },
);

function parseTime(text: string | undefined, field: string): number | null {
  if (text === undefined) return null;
  const t = /^\d+$/.test(text) ? Number(text) : Date.parse(text);
  if (!Number.isFinite(t)) throw badRequest(`${field} is not a time`, [{ field: `query.${field}`, message: 'is not a time' }]);
  return t;
}

/** The first sequence number whose event is at or after `time` (events are appended in time order). */
export function firstSeqAtOrAfter(store: Store, time: number): number {
  let lo = 1;
  let hi = store.lastSeq + 1;
  while (lo < hi) {
    const mid = Math.floor((lo + hi) / 2);
    const e = store.events(mid - 1, 1)[0];
    if (!e || e.at >= time) hi = mid;
    else lo = e.seq + 1;
  }
  return lo;
}

export const eventRoutes: FastifyPluginAsync<RouteDeps> = async (app, deps) => {
  useTypeBox(app);
  const { store } = deps;

  app.get<{ Querystring: Static<typeof EventsQuery> }>(
    '/events',
    {
      onRequest: allow('operator', 'owner', 'admin', 'marketer', 'viewer'),
      schema: { summary: 'Events of the tenant (delivery results, suppressions, …), filtered, newest first; bounded work per page (see next_cursor)', querystring: EventsQuery, response: { 200: Page(EventView) } },
    },
    async (req) => {
      const tenant = tenantOf(req);
      const q = req.query;
      const limit = q.limit ?? 100;
      const types = q.type ? new Set(q.type.split(',')) : null;
      const rcpt = q.rcpt?.toLowerCase();
      const since = parseTime(q.since, 'since');
      const until = parseTime(q.until, 'until');
      // the range of sequence numbers to read: [low, high)
      const low = since === null ? 1 : firstSeqAtOrAfter(store, since);
      const high = until === null ? store.lastSeq + 1 : firstSeqAtOrAfter(store, until);
      const cursor = decodeCursor(q.cursor, isNumber);
      const asc = q.order === 'asc';
      const matches = (e: TernEvent) =>
        e.tenant === tenant &&
        (!types || types.has(e.type)) &&
        (q.campaign === undefined || e.campaign === q.campaign) &&
        (rcpt === undefined || (typeof e.rcpt === 'string' && e.rcpt.toLowerCase() === rcpt) || (Array.isArray(e.recipients) && e.recipients.some((r) => typeof r === 'string' && r.toLowerCase() === rcpt)));

      const items: TernEvent[] = [];
      let scanned = 0;
      // `next` is the next sequence number to read (asc) or the one to read below (desc)
      let next = asc ? Math.max(low, cursor ?? 0) : Math.min(high, cursor ?? high);
      while (items.length < limit && scanned < SCAN_LIMIT && (asc ? next < high : next > low)) {
        const from = asc ? next - 1 : Math.max(low - 1, next - 1 - CHUNK);
        const chunk = store.events(from, CHUNK).filter((e) => e.seq < (asc ? high : next));
        if (!chunk.length) {
          // asc: nothing is left; desc: only retention removes events, oldest first, so nothing is below either
          next = asc ? high : low;
          break;
        }
        if (!asc) chunk.reverse();
        let consumed = true;
        for (const e of chunk) {
          scanned++;
          next = asc ? e.seq + 1 : e.seq;
          if (matches(e)) items.push(e);
          if (items.length >= limit || scanned >= SCAN_LIMIT) {
            consumed = false;
            break;
          }
        }
        if (consumed && !asc) next = from + 1;
      }
      const more = asc ? next < high : next > low;
      return { items, next_cursor: more ? encodeCursor(next) : null };
    },
  );
};
