/**
 * One message of the tenant: `GET /api/v1/messages/{queue id}` — each recipient's state and history, as the
 * operator's `GET /api/v1/queues/messages/{id}` shows it, without the operator's hold details. Another
 * tenant's message is not found.
 */
import { Type, type Static } from '@sinclair/typebox';
import type { FastifyPluginAsync } from 'fastify';
import { useTypeBox } from '../api.js';
import { allow, tenantOf } from '../auth.js';
import { notFound } from '../errors.js';
import { Epoch, Nullable, type RouteDeps } from './common.js';

const Step = Type.Object({
  at: Epoch('when'),
  type: Type.String({ description: 'accepted, deferred, delivered, failed, expired, retried, postponed, bounced, …' }),
  attempt: Type.Optional(Type.Integer()),
  rcpt: Nullable(Type.String()),
  recipients: Type.Optional(Type.Integer()),
  response: Type.Optional(Type.String()),
  mx: Type.Optional(Type.String()),
  source: Type.Optional(Type.String()),
  by: Type.Optional(Type.String()),
});

const RecipientState = Type.Object({
  rcpt: Type.String(),
  status: Type.String({ description: 'queued, delivered, failed or expired' }),
  attempts: Type.Integer(),
  next_at: Nullable(Epoch('next attempt')),
  last_reply: Nullable(Type.String()),
  updated_at: Epoch('last change'),
  held: Type.Boolean({ description: 'true while an operator hold keeps it in the queue' }),
});

const MessageView = Type.Object(
  {
    queue_id: Type.String(),
    message_id: Type.String({ description: 'the Message-ID header' }),
    campaign: Type.String(),
    sender: Type.String(),
    size: Type.Integer(),
    created_at: Epoch('accepted'),
    pending: Type.Integer({ description: 'recipients without a final result' }),
    recipients: Type.Array(RecipientState),
    history: Type.Array(Step, { description: 'accepted, then every step of every recipient, oldest first' }),
  },
  { title: 'Message' },
);

const Params = Type.Object({ id: Type.String({ minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9_-]+$', description: 'the queue id (as in "250 … queued as ID")' }) });

export const messageRoutes: FastifyPluginAsync<RouteDeps> = async (app, deps) => {
  useTypeBox(app);

  app.get<{ Params: Static<typeof Params> }>(
    '/messages/:id',
    { onRequest: allow('operator', 'owner', 'admin', 'marketer', 'viewer'), schema: { summary: 'A message: state and history of each recipient', params: Params, response: { 200: MessageView } } },
    async (req) => {
      const tenant = tenantOf(req);
      const m = deps.queues.message(req.params.id);
      // the same answer for a message that does not exist and one of another tenant
      if (!m || m.tenant !== tenant) throw notFound(`Message ${req.params.id}`);
      const view: Static<typeof MessageView> = {
        queue_id: m.queue_id,
        message_id: m.message_id,
        campaign: m.campaign,
        sender: m.sender,
        size: m.size,
        created_at: m.created_at,
        pending: m.pending,
        recipients: m.recipients.map((r) => ({ rcpt: r.rcpt, status: r.status, attempts: r.attempts, next_at: r.next_at, last_reply: r.last_reply, updated_at: r.updated_at, held: r.held.length > 0 })),
        history: m.history,
      };
      return view;
    },
  );
};
