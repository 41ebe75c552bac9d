/**
 * Sending statistics of the tenant: `GET /api/v1/stats?from=&to=&by=day|domain|campaign` — per-recipient
 * counts from the aggregates the stats follower keeps (src/events/stats.ts), and rates computed from them.
 */
import { Type, type Static } from '@sinclair/typebox';
import type { FastifyPluginAsync } from 'fastify';
import { useTypeBox } from '../api.js';
import { allow, tenantOf } from '../auth.js';
import { badRequest } from '../errors.js';
import { COUNTERS, addCounts, ratesOf, type Counts } from '../../events/stats.js';
import { Nullable, strict, type RouteDeps } from './common.js';

const Day = Type.String({ pattern: '^\\d{4}-\\d{2}-\\d{2}$', description: 'a UTC day, YYYY-MM-DD' });
const Query = strict({
  from: Type.Optional(Day),
  to: Type.Optional(Day),
  by: Type.Optional(Type.Union([Type.Literal('day'), Type.Literal('domain'), Type.Literal('campaign')], { description: 'group by UTC day (default), recipient domain or campaign' })),
});

const CountFields = Object.fromEntries(COUNTERS.map((c) => [c, Type.Integer()])) as Record<(typeof COUNTERS)[number], ReturnType<typeof Type.Integer>>;
const RateFields = {
  delivery_rate: Nullable(Type.Number({ description: 'delivered / accepted' })),
  bounce_rate: Nullable(Type.Number({ description: '(failed + bounced) / accepted' })),
  complaint_rate: Nullable(Type.Number({ description: 'complained / delivered' })),
  open_rate: Nullable(Type.Number({ description: 'unique opens / delivered (machine opens not counted)' })),
  click_rate: Nullable(Type.Number({ description: 'unique clicks / delivered (scanner clicks not counted)' })),
};
const Row = Type.Object({ key: Type.String({ description: 'the day, domain or campaign' }), ...CountFields, ...RateFields });
const StatsView = Type.Object(
  { from: Type.String(), to: Type.String(), by: Type.String(), items: Type.Array(Row, { description: 'days in order; domains and campaigns by accepted, most first (at most 1000)' }), totals: Type.Object({ ...CountFields, ...RateFields }) },
  { title: 'Stats' },
);

const DAY_MS = 86_400_000;
const MAX_DAYS = 366;
const dayOf = (ms: number) => new Date(ms).toISOString().slice(0, 10);
const full = (c: Counts) => ({ ...(Object.fromEntries(COUNTERS.map((k) => [k, c[k] ?? 0])) as Record<(typeof COUNTERS)[number], number>), ...ratesOf(c) });

export const statsRoutes: FastifyPluginAsync<RouteDeps> = async (app, deps) => {
  useTypeBox(app);
  const { stats } = deps.http;

  app.get<{ Querystring: Static<typeof Query> }>(
    '/stats',
    { onRequest: allow('operator', 'owner', 'admin', 'marketer', 'viewer'), schema: { summary: 'Counts and rates per day, recipient domain or campaign (UTC days; default the last 30)', querystring: Query, response: { 200: StatsView } } },
    async (req) => {
      const tenant = tenantOf(req);
      const to = req.query.to ?? dayOf(Date.now());
      const from = req.query.from ?? dayOf(Date.parse(to) - 29 * DAY_MS);
      const span = (Date.parse(to) - Date.parse(from)) / DAY_MS;
      if (Number.isNaN(span)) throw badRequest('from and to must be real days (YYYY-MM-DD)', [{ field: 'query.from', message: 'must be a real day' }]);
      if (span < 0) throw badRequest('from must not be after to', [{ field: 'query.from', message: `must be on or before ${to}` }]);
      if (span >= MAX_DAYS) throw badRequest(`Ask for at most ${MAX_DAYS} days at a time`, [{ field: 'query.from', message: `must be within ${MAX_DAYS} days of to` }]);
      const by = req.query.by ?? 'day';
      // what was sent just before this request is counted too
      await stats.catchUp();
      const groups = stats.read(tenant, from, to, by);
      const rows = [...groups].sort(by === 'day' ? (a, b) => (a[0] < b[0] ? -1 : 1) : (a, b) => (b[1].accepted ?? 0) - (a[1].accepted ?? 0) || (a[0] < b[0] ? -1 : 1));
      const totals: Counts = {};
      for (const [, c] of rows) addCounts(totals, c);
      return { from, to, by, items: rows.slice(0, 1000).map(([key, c]) => ({ key, ...full(c) })), totals: full(totals) };
    },
  );
};
