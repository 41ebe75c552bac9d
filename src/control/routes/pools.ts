/**
 * Egress pools, for the operator: `/api/v1/pools` (list, create, read, change). Pools of the config file
 * are listed but change only there (409); pools made here are stored in LMDB and applied at once: mail
 * bound for a new source leaves from it, a changed EHLO is used by new connections, mail waiting on a
 * removed source moves to another source of its pool. See src/control/pools.ts.
 */
import { Type, type Static } from '@sinclair/typebox';
import type { FastifyPluginAsync } from 'fastify';
import { useTypeBox } from '../api.js';
import { allow } from '../auth.js';
import { ApiError, badRequest, notFound } from '../errors.js';
import { bindProblem, type Pool, type PoolSource } from '../pools.js';
import { DomainName } from '../validate.js';
import { Epoch, Nullable, mutate, strict, type RouteDeps } from './common.js';

const Name = (what: string) => Type.String({ minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9._-]+$', description: `${what}: letters, digits, ".", "_" and "-"` });

const SourceWarmup = strict({
  plan: Type.String({ minLength: 1, maxLength: 64, description: 'a plan of the warmup file or warmup.plans' }),
  start: Type.String({ pattern: '^\\d{4}-\\d{2}-\\d{2}$', description: 'YYYY-MM-DD (UTC): the first day the source takes mail' }),
});

const SourceBody = strict({
  name: Name('the source\'s name, unique across pools'),
  address: Type.String({ minLength: 2, maxLength: 45, description: 'the IP address mail leaves from (0.0.0.0: any); it must be an address of this host' }),
  ehlo: DomainName({ description: 'the name the source gives in EHLO (its PTR name)' }),
  warmup: Type.Optional(Nullable(SourceWarmup)),
});

const SourceView = Type.Object({
  name: Type.String(),
  address: Type.String(),
  ehlo: Type.String(),
  warmup: Nullable(Type.Object({ plan: Type.String(), start: Type.String() })),
});

export const PoolView = Type.Object(
  {
    name: Type.String(),
    sources: Type.Array(SourceView),
    managed_by: Type.Union([Type.Literal('config'), Type.Literal('api')], { description: 'config: defined in the config file, which owns it (read-only here)' }),
    created_at: Nullable(Epoch('made (null for the config\'s)')),
    updated_at: Nullable(Epoch('last changed (null for the config\'s)')),
  },
  { title: 'Pool' },
);

const Sources = Type.Array(SourceBody, { minItems: 1, maxItems: 256 });
const CreateBody = strict({ name: Name('the pool\'s name'), sources: Sources });
const PatchBody = strict(
  {
    sources: Type.Optional(Type.Array(SourceBody, { minItems: 1, maxItems: 256, description: 'the pool\'s sources, all of them (replaces the list)' })),
    upsert_sources: Type.Optional(Type.Array(SourceBody, { minItems: 1, maxItems: 256, description: 'sources to add, or to change by name (EHLO, address, warmup); the others stay' })),
  },
  { minProperties: 1 },
);
const PoolParams = Type.Object({ name: Name('a pool\'s name') });

type SourceInput = Static<typeof SourceBody>;

const view = (p: Pool): Static<typeof PoolView> => ({
  name: p.name,
  sources: p.sources.map((s) => ({ name: s.name, address: s.address, ehlo: s.ehlo, warmup: s.warmup ? { plan: s.warmup.plan, start: s.warmup.start } : null })),
  managed_by: p.managed_by,
  created_at: p.managed_by === 'config' ? null : p.created_at,
  updated_at: p.managed_by === 'config' ? null : p.updated_at,
});

const toSource = (s: SourceInput): PoolSource => ({ name: s.name, address: s.address, ehlo: s.ehlo, ...(s.warmup ? { warmup: { plan: s.warmup.plan, start: s.warmup.start } } : {}) });

export const poolRoutes: FastifyPluginAsync<RouteDeps> = async (app, deps) => {
  useTypeBox(app);
  const { pools } = deps.plane;
  const live = (name: string) => pools.get(name) ?? (() => { throw notFound(`Pool ${name}`); })();

  /** Checks sources as a whole, then that this host can send from each new address. */
  const check = async (pool: string, sources: PoolSource[], before: PoolSource[] = []) => {
    const problems = pools.problems(pool, sources);
    const known = new Set(before.map((s) => s.address));
    for (const [i, s] of sources.entries()) {
      if (known.has(s.address) || problems.some((p) => p.field === `body.sources.${i}.address`)) continue;
      const why = await bindProblem(s.address);
      if (why) problems.push({ field: `body.sources.${i}.address`, message: why });
    }
    if (problems.length) throw badRequest(`The sources are invalid: ${problems.map((p) => `${p.field} ${p.message}`).join('; ')}`, problems);
  };

  app.get(
    '/pools',
    { onRequest: allow('operator'), schema: { summary: 'List egress pools (the config file\'s first)', response: { 200: Type.Object({ items: Type.Array(PoolView), next_cursor: Type.Null() }) } } },
    async () => ({ items: pools.list().map(view), next_cursor: null }),
  );

  app.post<{ Body: Static<typeof CreateBody> }>(
    '/pools',
    { onRequest: allow('operator'), schema: { summary: 'Create an egress pool with its sources (address, EHLO, warmup plan); used at once', body: CreateBody, response: { 201: PoolView } } },
    async (req, reply) => {
      const { name } = req.body;
      if (pools.has(name)) throw new ApiError(409, 'conflict', `A pool is named ${name} already`);
      const sources = req.body.sources.map(toSource);
      await check(name, sources);
      await mutate(deps, req, () => pools.putIn(name, sources), () => ({ action: 'pool.create', tenant: null, target: { type: 'pool', id: name }, changes: { sources } }));
      pools.refresh(name);
      return reply.code(201).send(view(live(name)));
    },
  );

  app.get<{ Params: { name: string } }>(
    '/pools/:name',
    { onRequest: allow('operator'), schema: { summary: 'One egress pool', params: PoolParams, response: { 200: PoolView } } },
    async (req) => view(live(req.params.name)),
  );

  app.patch<{ Params: { name: string }; Body: Static<typeof PatchBody> }>(
    '/pools/:name',
    {
      onRequest: allow('operator'),
      schema: { summary: 'Change an egress pool: replace its sources, or add and change some (EHLO, address, warmup); new connections use the change', params: PoolParams, body: PatchBody, response: { 200: PoolView } },
    },
    async (req) => {
      const p = live(req.params.name);
      if (p.managed_by === 'config') throw new ApiError(409, 'managed_by_config', `Pool ${p.name} is defined in the config file, which owns it; change it there`);
      if (req.body.sources && req.body.upsert_sources) throw badRequest('Send either sources (the whole list) or upsert_sources (some to add or change), not both');
      let sources: PoolSource[];
      if (req.body.sources) sources = req.body.sources.map(toSource);
      else {
        sources = p.sources.map((s) => ({ ...s }));
        for (const s of req.body.upsert_sources!.map(toSource)) {
          const i = sources.findIndex((x) => x.name === s.name);
          if (i >= 0) sources[i] = s;
          else sources.push(s);
        }
      }
      await check(p.name, sources, p.sources);
      await mutate(deps, req, () => pools.putIn(p.name, sources), () => ({ action: 'pool.update', tenant: null, target: { type: 'pool', id: p.name }, changes: { ...req.body } }));
      pools.refresh(p.name);
      return view(live(p.name));
    },
  );
};
