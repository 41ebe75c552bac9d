/**
 * A tenant's suppression list: `/api/v1/suppressions`. Mail to a suppressed address is dropped at
 * acceptance (a `suppressed` event each). Entries come from hard bounces, complaints, unsubscribes, repeated
 * soft bounces, or are added here (`manual`).
 */
import { Type, type Static } from '@sinclair/typebox';
import type { FastifyPluginAsync } from 'fastify';
import { normalizeRecipient, type SuppressionEntry } from '../../bounce/suppression.js';
import { useTypeBox } from '../api.js';
import { allow, tenantOf } from '../auth.js';
import { notFound } from '../errors.js';
import { Page, PageQuery, decodeCursor, isString, pageOf } from '../pagination.js';
import { Mailbox, OneLine } from '../validate.js';
import { Epoch, NoContent, Nullable, mutate, strict, type RouteDeps } from './common.js';

const SuppressionView = Type.Object(
  {
    address: Type.String({ description: 'lower case' }),
    reason: Type.String({ description: 'hard_bounce, bounce, soft_bounces, complaint, unsubscribe or manual' }),
    detail: Nullable(Type.String({ description: 'bounce category, complaint type, or the reason given when added by hand' })),
    queue_id: Nullable(Type.String({ description: 'the message that caused it, when known' })),
    at: Epoch('suppressed since'),
  },
  { title: 'Suppression' },
);

const AddBody = strict({ address: Mailbox(), reason: Type.Optional(OneLine(500, { description: 'why (kept as detail)' })) });
const AddressParams = Type.Object({ address: OneLine(254, { description: 'the suppressed address (URL-encoded)' }) });

const view = (address: string, e: SuppressionEntry): Static<typeof SuppressionView> => ({ address, reason: e.reason, detail: e.detail, queue_id: e.queue_id, at: e.at });

export const suppressionRoutes: FastifyPluginAsync<RouteDeps> = async (app, deps) => {
  useTypeBox(app);
  const list = deps.suppressions;
  const READERS = allow('operator', 'owner', 'admin', 'marketer', 'viewer');
  const WRITERS = ['operator', 'owner', 'admin', 'marketer'] as const;

  app.get<{ Querystring: PageQuery }>(
    '/suppressions',
    { onRequest: READERS, schema: { summary: 'Suppressed addresses, in address order', querystring: strict(PageQuery), response: { 200: Page(SuppressionView) } } },
    async (req) => {
      const limit = req.query.limit ?? 100;
      const rows = list.list(tenantOf(req), decodeCursor(req.query.cursor, isString), limit + 1);
      return pageOf(rows.map((r) => view(r.address, r)), limit, (r) => r.address);
    },
  );

  app.get<{ Params: Static<typeof AddressParams> }>(
    '/suppressions/:address',
    { onRequest: READERS, schema: { summary: 'Whether an address is suppressed, and why', params: AddressParams, response: { 200: SuppressionView } } },
    async (req) => {
      const entry = list.get(tenantOf(req), req.params.address);
      if (!entry) throw notFound(`A suppression of ${req.params.address}`);
      return view(normalizeRecipient(req.params.address), entry);
    },
  );

  app.post<{ Body: Static<typeof AddBody> }>(
    '/suppressions',
    { onRequest: allow(...WRITERS), schema: { summary: 'Suppress an address (201; 200 with the existing entry when it already is)', body: AddBody, response: { 200: SuppressionView, 201: SuppressionView } } },
    async (req, reply) => {
      const tenant = tenantOf(req);
      const address = normalizeRecipient(req.body.address);
      const added = await mutate(
        deps,
        req,
        (tx) => list.addIn(tx, tenant, address, { reason: 'manual', detail: req.body.reason ?? null, queue_id: null }),
        (yes) => (yes ? { action: 'suppression.add', tenant, target: { type: 'suppression', id: address }, changes: { reason: 'manual', detail: req.body.reason ?? null } } : null),
      );
      return reply.code(added ? 201 : 200).send(view(address, list.get(tenant, address)!));
    },
  );

  app.delete<{ Params: Static<typeof AddressParams> }>(
    '/suppressions/:address',
    { onRequest: allow(...WRITERS), schema: { summary: 'Lift a suppression', params: AddressParams, response: { 204: NoContent } } },
    async (req, reply) => {
      const tenant = tenantOf(req);
      const address = normalizeRecipient(req.params.address);
      const entry = list.get(tenant, address);
      if (!entry) throw notFound(`A suppression of ${address}`);
      await mutate(deps, req, (tx) => list.removeIn(tx, tenant, address), () => ({ action: 'suppression.remove', tenant, target: { type: 'suppression', id: address }, changes: { was: entry.reason } }));
      return reply.code(204).send();
    },
  );
};
