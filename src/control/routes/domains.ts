/**
 * A tenant's sending domains: `/api/v1/domains`. Adding one answers the DNS records to publish; `check`
 * looks them up live and says, per record, what is wrong and how to fix it. See domains.ts.
 */
import { Type, type Static } from '@sinclair/typebox';
import type { FastifyPluginAsync } from 'fastify';
import { useTypeBox } from '../api.js';
import { allow, tenantOf } from '../auth.js';
import { ApiError, notFound } from '../errors.js';
import type { DomainRecord } from '../domains.js';
import { Page, PageQuery, decodeCursor, isString, pageOf } from '../pagination.js';
import { DomainName } from '../validate.js';
import { Epoch, NoContent, Nullable, mutate, strict, type RouteDeps } from './common.js';

const RecordKey = Type.String({ description: 'spf, dkim_rsa, dkim_ed25519, dmarc, bounce_mx, bounce_spf, tracking_cname, ptr' });

const DnsRecordView = Type.Object(
  {
    key: RecordKey,
    name: Type.String({ description: 'the owner name to publish it at' }),
    type: Type.String({ description: 'TXT, MX or CNAME' }),
    value: Type.String({ description: 'for MX the host; the priority is separate' }),
    priority: Type.Optional(Type.Integer()),
    required: Type.Boolean({ description: 'needed for the domain to be verified; the others give warnings' }),
  },
  { title: 'DnsRecord' },
);

const RecordCheckView = Type.Object(
  {
    key: RecordKey,
    name: Type.String(),
    type: Type.String(),
    expected: Type.String(),
    found: Nullable(Type.String({ description: 'what DNS answered (records joined with " | ")' })),
    status: Type.Union(['ok', 'missing', 'wrong', 'warning', 'not_applicable'].map((s) => Type.Literal(s))),
    fix: Type.String({ description: 'one sentence: how to fix it, or what was confirmed' }),
  },
  { title: 'RecordCheck' },
);

const CheckView = Type.Object(
  {
    checked_at: Epoch('checked'),
    verified: Type.Boolean({ description: 'SPF, at least one DKIM key and the bounce MX are ok' }),
    records: Type.Array(RecordCheckView, { description: 'the published records, then the PTR of each egress source of the pool' }),
  },
  { title: 'DomainCheck' },
);

const DomainView = Type.Object(
  {
    domain: Type.String(),
    status: Type.Union([Type.Literal('pending'), Type.Literal('verified'), Type.Literal('failing')], { description: 'pending until the first passing check; failing: was verified, a later check failed (it still signs and sends)' }),
    selectors: Type.Array(Type.String(), { description: 'DKIM selectors (RSA-2048, Ed25519)' }),
    bounce_domain: Type.String({ description: 'its bounce subdomain (MX: the inbound listener)' }),
    tracking_domain: Type.String({ description: 'its tracking subdomain (CNAME: the tracking host)' }),
    records: Type.Array(DnsRecordView, { description: 'the DNS records to publish' }),
    last_check: Nullable(CheckView),
    created_at: Epoch('added'),
    verified_at: Nullable(Epoch('last became verified')),
  },
  { title: 'Domain' },
);

const AddBody = strict({ domain: DomainName({ description: 'the domain mail is sent From, e.g. example.com' }) });
const DomainParams = Type.Object({ domain: DomainName() });

const MANAGERS = ['operator', 'owner', 'admin'] as const;

export const domainRoutes: FastifyPluginAsync<RouteDeps> = async (app, deps) => {
  useTypeBox(app);
  const { domains } = deps.plane;
  const view = (r: DomainRecord): Static<typeof DomainView> => ({
    domain: r.domain,
    status: r.status,
    selectors: r.keys.map((k) => k.selector),
    bounce_domain: r.bounce_domain,
    tracking_domain: r.tracking_domain,
    records: domains.recordsOf(r).map(({ key, name, type, value, priority, required }) => ({ key, name, type, value, required, ...(priority !== undefined ? { priority } : {}) })),
    last_check: r.last_check ? { checked_at: r.last_check.checked_at, verified: r.last_check.verified, records: r.last_check.records.map(({ inconclusive: _, ...c }) => c) } : null,
    created_at: r.created_at,
    verified_at: r.verified_at,
  });
  const own = (tenant: string, domain: string) => domains.get(tenant, domain) ?? (() => { throw notFound(`Domain ${domain.toLowerCase()}`); })();

  app.get<{ Querystring: PageQuery }>(
    '/domains',
    { onRequest: allow('operator', 'owner', 'admin', 'marketer', 'viewer'), schema: { summary: "The tenant's sending domains, in name order", querystring: strict(PageQuery), response: { 200: Page(DomainView) } } },
    async (req) => {
      const limit = req.query.limit ?? 100;
      return pageOf(domains.list(tenantOf(req), decodeCursor(req.query.cursor, isString), limit + 1).map(view), limit, (d) => d.domain);
    },
  );

  app.get<{ Params: Static<typeof DomainParams> }>(
    '/domains/:domain',
    { onRequest: allow('operator', 'owner', 'admin', 'marketer', 'viewer'), schema: { summary: 'One sending domain: its records and its last check', params: DomainParams, response: { 200: DomainView } } },
    async (req) => view(own(tenantOf(req), req.params.domain)),
  );

  app.post<{ Body: Static<typeof AddBody> }>(
    '/domains',
    { onRequest: allow(...MANAGERS), schema: { summary: 'Add a sending domain: generates its DKIM keys and answers the DNS records to publish (201; 200 with the existing domain when it is already yours)', body: AddBody, response: { 200: DomainView, 201: DomainView } } },
    async (req, reply) => {
      const tenant = tenantOf(req);
      const domain = req.body.domain.toLowerCase();
      const existing = domains.get(tenant, domain);
      if (existing) return reply.code(200).send(view(existing));
      const taken = () => new ApiError(409, 'conflict', `${domain} is a sending domain of another account; ask the operator`);
      if (domains.ownerOf(domain) !== undefined) throw taken();
      const prepared = await domains.prepare(tenant, domain);
      const made = await mutate(deps, req, () => domains.createIn(prepared), (ok) => (ok ? { action: 'domain.create', tenant, target: { type: 'domain', id: domain }, changes: { selectors: prepared.keys.map((k) => k.selector) } } : null));
      if (!made) throw taken();
      domains.refresh();
      return reply.code(201).send(view(prepared));
    },
  );

  app.delete<{ Params: Static<typeof DomainParams> }>(
    '/domains/:domain',
    { onRequest: allow(...MANAGERS), schema: { summary: 'Remove a sending domain and its keys: its mail is no longer signed, and (unless allowed) no longer accepted', params: DomainParams, response: { 204: NoContent } } },
    async (req, reply) => {
      const tenant = tenantOf(req);
      const r = own(tenant, req.params.domain);
      await mutate(deps, req, () => domains.removeIn(tenant, r.domain), () => ({ action: 'domain.delete', tenant, target: { type: 'domain', id: r.domain }, changes: { status: r.status } }));
      domains.refresh();
      return reply.code(204).send();
    },
  );

  app.post<{ Params: Static<typeof DomainParams> }>(
    '/domains/:domain/check',
    { onRequest: allow(...MANAGERS), schema: { summary: "Look up the domain's DNS records now; each comes back with its status and how to fix it", params: DomainParams, response: { 200: DomainView } } },
    async (req) => {
      const tenant = tenantOf(req);
      const r = own(tenant, req.params.domain);
      const checked = await domains.check(tenant, r.domain);
      if (!checked) throw notFound(`Domain ${r.domain}`);
      return view(checked);
    },
  );
};
