/**
 * Acceptance: the one pipeline every way into the spool goes through (SMTP submission, HTTP sending, the
 * node's own account mail), as named steps:
 *   suppress → prepare (worker threads: checks, headers, Feedback-ID, tracking, DKIM) → sender domain →
 *   quota → spool (fsynced) → schedule
 * It answers with what happened to each recipient, or a refusal that says which step refused and why; the
 * caller turns that into its own protocol's answer (an SMTP reply, an HTTP status). Nothing is stored on a
 * refusal, and the answer comes only once the spool transaction is durable.
 */
import type { Config } from '../core/config.js';
import type { Logger } from '../core/log.js';
import type { Metrics } from '../core/metrics.js';
import type { SuppressionList } from '../bounce/suppression.js';
import type { SendingPolicy, SendingRefusal } from '../control/tenants.js';
import type { SenderDomainPolicy } from '../control/domains.js';
import { defaultStreamOf, trackingSettingsFor, type TenantTrackingLookup } from '../tracking/settings.js';
import type { Preparer } from './prepare-pool.js';
import type { Prepared } from './prepare.js';
import type { Scheduler } from './queues.js';
import { newMessageId, type Spool } from './spool.js';

export interface AcceptanceDeps {
  config: Config;
  spool: Spool;
  scheduler: Scheduler;
  preparer: Preparer;
  log: Logger;
  metrics: Metrics;
  suppressions: SuppressionList;
  /** counts daily quotas (absent: no quotas) */
  sending?: SendingPolicy;
  /** refuses From domains the tenant has not verified (absent: any From) */
  senderDomains?: SenderDomainPolicy;
  /** tracking settings of tenants the config file does not name (the control API's) */
  tenantTracking?: TenantTrackingLookup;
}

export interface MessageSubmission {
  tenant: string;
  /** the envelope sender ('' for a null sender) */
  sender: string;
  recipients: string[];
  /**
   * The RFC 5322 message (CRLF line ends), or one message per recipient in `recipients` order (HTTP sending
   * with per-recipient substitutions): each is prepared on its own and all are spooled as one message.
   */
  raw: Uint8Array | Uint8Array[];
  /** SMTPUTF8: UTF-8 addresses are fine in the headers */
  utf8: boolean;
  /** where it came in, for the accepted event and metrics: submission, http, control */
  listener: string;
  client?: string;
  user?: string;
  /** the stream when the message does not say (X-Tern-Stream); default: the tenant's */
  stream?: 'marketing' | 'transactional';
  /** false: no tracking and no List-Unsubscribe (the node's own account mail) */
  tracking?: boolean;
  /** the tenant's policy (quota) applies; false for the node's own account mail, which must not be blocked by it */
  quota?: boolean;
  /** kept with the accepted event */
  tags?: string[];
  metadata?: Record<string, string>;
}

export type RecipientStatus = { address: string; status: 'queued'; index: number } | { address: string; status: 'suppressed'; reason: string };

export interface Accepted {
  ok: true;
  queueId: string;
  messageId: string;
  campaign: string;
  /** in the order given */
  recipients: RecipientStatus[];
}

/** Which step refused the message. `content` carries the preparation's SMTP code; the others a SendingRefusal. */
export type AcceptanceRefusal =
  | { ok: false; step: 'content'; code: number; status: string; reason: string }
  | { ok: false; step: 'sender_domain' | 'quota'; refusal: SendingRefusal }
  | { ok: false; step: 'spool'; reason: string };

export class Acceptance {
  constructor(private readonly deps: AcceptanceDeps) {}

  async accept(input: MessageSubmission): Promise<Accepted | AcceptanceRefusal> {
    const { config, spool, scheduler, preparer, log, metrics } = this.deps;
    const { tenant } = input;
    const msgId = newMessageId();
    const perRecipient = Array.isArray(input.raw);
    if (perRecipient && input.raw.length !== input.recipients.length) throw new Error('acceptance: one message per recipient expected');

    // 1. suppression: those recipients are dropped here, with an event each (before preparation, which makes
    // a copy per remaining recipient when the message is tracked)
    const recipients: string[] = [];
    const raws: Uint8Array[] = [];
    const suppressed: Array<{ to: string; reason: string; detail: string | null }> = [];
    const statuses: RecipientStatus[] = [];
    input.recipients.forEach((address, i) => {
      const entry = this.deps.suppressions.get(tenant, address);
      if (entry) {
        suppressed.push({ to: address, reason: entry.reason, detail: entry.detail });
        statuses.push({ address, status: 'suppressed', reason: entry.reason });
      } else {
        statuses.push({ address, status: 'queued', index: recipients.length });
        recipients.push(address);
        if (perRecipient) raws.push((input.raw as Uint8Array[])[i]!);
      }
    });

    // 2. preparation: one message for all recipients, or each recipient's own (when nobody is left, the first
    // is still prepared: a refused message is refused whoever it was for)
    const common = { hostname: config.hostname, id: msgId, utf8: input.utf8, tenant, feedbackSenderId: config.bounce.feedbackSenderId, stream: input.stream ?? defaultStreamOf(config, tenant, this.deps.tenantTracking) };
    const tracking = (rcpts: string[]) => (input.tracking === false ? null : trackingSettingsFor(config, tenant, rcpts, this.deps.tenantTracking));
    let prepared: Prepared[];
    if (perRecipient) {
      const jobs = raws.length ? raws.map((raw, i) => ({ raw, rcpts: [recipients[i]!] })) : [{ raw: (input.raw as Uint8Array[])[0]!, rcpts: [] }];
      const results = await Promise.all(jobs.map((j) => preparer.prepare({ ...common, raw: j.raw, tracking: tracking(j.rcpts) })));
      const refused = results.find((r) => !r.ok);
      if (refused && !refused.ok) return { ok: false, step: 'content', code: refused.code, status: refused.status, reason: refused.reason };
      prepared = results as Prepared[];
    } else {
      const result = await preparer.prepare({ ...common, raw: input.raw as Uint8Array, tracking: tracking(recipients) });
      if (!result.ok) return { ok: false, step: 'content', code: result.code, status: result.status, reason: result.reason };
      prepared = [result];
    }
    const first = prepared[0]!;

    // 3. the From domain must be one the tenant may send from
    const domainRefusal = this.deps.senderDomains?.refusal(tenant, first.fromDomain);
    if (domainRefusal) return { ok: false, step: 'sender_domain', refusal: domainRefusal };

    // 4. the quota counts what is accepted; a refusal here is temporary: the client may try tomorrow
    if (input.quota !== false && this.deps.sending && !(await this.deps.sending.take(tenant, recipients.length))) {
      const text = 'Daily sending quota reached; it resets at 00:00 UTC';
      return { ok: false, step: 'quota', refusal: { reason: 'quota', smtp: { code: 451, status: '4.7.1', text }, http: { status: 429, code: 'quota_exceeded', message: text } } };
    }

    // 5. the spool: answered only once durable
    const bodies = perRecipient ? prepared.map((p) => p.personal?.[0] ?? p.message) : first.personal;
    const started = performance.now();
    let stored;
    try {
      stored = await spool.accept({
        msgId,
        tenant,
        campaign: first.campaign,
        sender: input.sender,
        recipients,
        suppressed,
        body: bodies?.[0] ?? first.message,
        bodies: perRecipient && !recipients.length ? undefined : bodies,
        messageId: first.messageId,
        listener: input.listener,
        client: input.client,
        user: input.user,
        tags: input.tags,
        metadata: input.metadata,
      });
    } catch (err) {
      log.error({ err }, 'spool write failed');
      return { ok: false, step: 'spool', reason: 'Could not store the message; try again later' };
    }
    metrics.spoolCommitSeconds.observe((performance.now() - started) / 1000);
    metrics.messagesAccepted.inc({ listener: input.listener });
    metrics.recipientsAccepted.inc(recipients.length);
    if (suppressed.length) metrics.recipientsSuppressed.inc(suppressed.length);
    scheduler.enqueue(stored.jobs);
    return { ok: true, queueId: stored.msgId, messageId: first.messageId, campaign: first.campaign, recipients: statuses };
  }
}
