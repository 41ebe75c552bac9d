/**
 * What a report that came back does. One message from the inbound listener goes through named steps:
 *
 *   parse (BounceParser: bounded, on a parsing thread, with a deadline) → classify (the bounce rules) →
 *   attribute (the VERP address it was sent to, else one in the report, else X-Tern-Ref) → find the message
 *   and recipients in the spool → plan the events and suppressions → one transaction → fsync
 *
 * The listener answers 250 only once ingestReport() resolves, so a report is never acknowledged and lost.
 * No sockets here: tests and the benchmark call it directly.
 *
 * Which recipients a report is about. A VERP address names one recipient of one message, and with VERP each
 * recipient had a transaction of its own, so a report sent back to it is about that recipient. A DSN lists
 * its recipients, though, and may list several (an alias that expanded, a gateway that reports for a whole
 * message): each DSN recipient is matched to the message's recipients by address (Original-Recipient first,
 * then Final-Recipient, case-insensitively). A DSN recipient that matches none is taken to be the VERP
 * recipient when it is the report's only recipient or gives no address (forwarding rewrote it); otherwise it
 * is recorded unattributed. Each recipient of the message gets at most one result per report (the first).
 * Complaints and auto-replies are always about the VERP recipient (ARF reports often redact the address).
 */
import type { Logger } from '../core/log.js';
import type { Store, Tx } from '../core/store.js';
import type { MessageRecord, RecipientRecord } from '../mta/spool.js';
import type { BounceRules } from './classify.js';
import type { Report, ReportKind } from './parse.js';
import { attributeReport, classifyReport, type Attribution, type ClassifiedRecipient, type ClassifiedReport } from './report.js';
import { normalizeRecipient, type SuppressionList } from './suppression.js';
import type { VerpCodec, VerpRejection } from './verp.js';

/** The SMTP transaction that brought the report. */
export interface IngestEnvelope {
  /** RCPT TO addresses, in order: a VERP address among them is the most direct attribution */
  rcptTo: string[];
  /** MAIL FROM; null or "" for a DSN (null sender) */
  mailFrom: string | null;
  /** the client's IP address */
  client: string;
}

/** The spool functions ingestion reads and writes through (the spool owns its records). */
export interface SpoolReader {
  message(msgId: string): MessageRecord | undefined;
  recipientState(msgId: string, i: number): RecipientRecord | undefined;
  recipientStates(msgId: string): Array<RecipientRecord & { i: number }>;
  noteReportIn(msgId: string, i: number, step: { at: number; type: 'bounced' | 'dsn_delayed' | 'complained' | 'autoreply'; response?: string; mx?: string }): boolean;
}

export interface IngestDeps {
  parser: { parse(raw: Uint8Array): Promise<Report> };
  rules: BounceRules;
  verp: VerpCodec;
  suppressions: SuppressionList;
  spool: SpoolReader;
  store: Store;
  log: Logger;
  /** called for each address or ref in the report that looked like ours and did not verify */
  onRejectedToken?: (reason: Exclude<VerpRejection, 'not-verp'>) => void;
}

/** attributed: at least one recipient of ours got its event; unattributed: a report, but not of ours; unknown: not a report. */
export type IngestResult = 'attributed' | 'unattributed' | 'unknown';

export interface IngestOutcome {
  kind: ReportKind;
  result: IngestResult;
  attribution: Attribution | null;
  /** the events written, in order (without the suppression_added ones) */
  events: Array<{ type: string; seq: number; rcpt?: string }>;
  /** addresses this report put on a suppression list */
  suppressed: string[];
}

/** DSN actions that say the mail got through (a positive DSN: nothing to act on). */
const POSITIVE = new Set(['delivered', 'relayed', 'expanded']);

interface Target {
  i: number;
  rcpt: string;
  report: ClassifiedRecipient;
}

interface Plan {
  kind: ReportKind;
  attribution: Attribution | null;
  message: MessageRecord | null;
  targets: Target[];
  /** report recipients that are not ours (DSN), with why */
  leftOver: ClassifiedRecipient[];
  /** why nothing could be attributed, when nothing could */
  unattributedReason: string | null;
}

/** Parses, classifies, attributes and stores one report; resolves once it is durable. Never throws on bad input. */
export async function ingestReport(raw: Uint8Array, envelope: IngestEnvelope, deps: IngestDeps): Promise<IngestOutcome> {
  const report = classifyReport(await deps.parser.parse(raw), deps.rules);
  const attribution = attributeReport(report, deps.verp, {
    envelope: envelope.rcptTo,
    onRejected: (candidate, reason) => {
      deps.log.warn({ candidate, reason, client: envelope.client, kind: report.kind }, 'report carries a VERP token that does not verify; ignored');
      deps.onRejectedToken?.(reason);
    },
  });
  const plan = planReport(report, attribution, deps.spool);
  const outcome: IngestOutcome = { kind: report.kind, result: 'unknown', attribution, events: [], suppressed: [] };
  await deps.store.transact((tx) => record(tx, report, plan, envelope, raw.byteLength, deps, outcome));
  await deps.store.durable();
  outcome.result = report.kind === 'unknown' ? 'unknown' : plan.targets.length ? 'attributed' : 'unattributed';
  return outcome;
}

/** Which recipients of which message the report is about. Reads the spool; writes nothing. */
function planReport(report: ClassifiedReport, attribution: Attribution | null, spool: SpoolReader): Plan {
  const plan: Plan = { kind: report.kind, attribution, message: null, targets: [], leftOver: [], unattributedReason: null };
  if (report.kind === 'unknown') return plan;
  if (!attribution) {
    plan.unattributedReason = 'no VERP address or X-Tern-Ref of ours verifies';
    plan.leftOver = report.recipients;
    return plan;
  }
  const message = spool.message(attribution.message_id);
  const named = message ? spool.recipientState(attribution.message_id, attribution.recipient) : undefined;
  if (!message || !named) {
    plan.unattributedReason = message
      ? `message ${attribution.message_id} has no recipient ${attribution.recipient}`
      : `message ${attribution.message_id} is no longer in the spool (finished messages are pruned after events.retention)`;
    plan.leftOver = report.recipients;
    return plan;
  }
  plan.message = message;
  const verpTarget = (r: ClassifiedRecipient): Target => ({ i: attribution.recipient, rcpt: named.to, report: r });
  if (report.kind !== 'dsn') {
    // a complaint or an auto-reply is about the recipient the VERP address names
    const first = report.recipients[0];
    if (first) plan.targets.push(verpTarget(first));
    return plan;
  }

  // the message's recipients by address: read only when the report names someone other than the VERP recipient
  const namedAddress = normalizeRecipient(named.to);
  let byAddress: Map<string, RecipientRecord & { i: number }> | null = null;
  const match = (r: ClassifiedRecipient): Target | null => {
    for (const a of [r.original_recipient, r.address]) {
      if (!a) continue;
      const address = normalizeRecipient(a);
      if (address === namedAddress) return verpTarget(r);
      byAddress ??= new Map(spool.recipientStates(attribution.message_id).map((x) => [normalizeRecipient(x.to), x]));
      const found = byAddress.get(address);
      if (found) return { i: found.i, rcpt: found.to, report: r };
    }
    return null;
  };
  const taken = new Set<number>();
  const unmatched: ClassifiedRecipient[] = [];
  for (const r of report.recipients) {
    const t = match(r);
    if (!t) unmatched.push(r);
    else if (!taken.has(t.i)) {
      taken.add(t.i);
      plan.targets.push(t);
    }
  }
  for (const r of unmatched) {
    if ((report.recipients.length === 1 || !r.address) && !taken.has(attribution.recipient)) {
      taken.add(attribution.recipient);
      plan.targets.push(verpTarget(r));
    } else plan.leftOver.push(r);
  }
  return plan;
}

const recipientSummary = (r: ClassifiedRecipient) => ({ address: r.address, action: r.action, status: r.status, category: r.category, hard: r.hard });

/** Writes the plan's events, suppressions and recipient history inside one transaction. */
function record(tx: Tx, report: ClassifiedReport, plan: Plan, envelope: IngestEnvelope, size: number, deps: IngestDeps, outcome: IngestOutcome): void {
  const now = Date.now();
  const from = { reported_by: envelope.client, mail_from: envelope.mailFrom ?? '', format: report.detail };
  const emit = (type: string, fields: Record<string, unknown>, rcpt?: string): number => {
    const seq = tx.event(type, { at: now, ...fields });
    outcome.events.push({ type, seq, rcpt });
    return seq;
  };

  if (report.kind === 'unknown') {
    emit('report_unknown', { ...from, rcpt_to: envelope.rcptTo, size, detail: report.detail, queue_id: plan.attribution?.message_id });
    return;
  }
  if (plan.leftOver.length || !plan.targets.length) {
    emit('report_unattributed', {
      ...from,
      kind: report.kind,
      rcpt_to: envelope.rcptTo,
      reason: plan.unattributedReason ?? (plan.targets.length ? 'recipients not in the message' : 'no recipient of the message matches'),
      queue_id: plan.attribution?.message_id,
      recipients: plan.leftOver.map(recipientSummary),
      feedback_type: report.feedback?.type ?? undefined,
    });
  }
  const message = plan.message;
  if (!message) return;
  const queueId = plan.attribution!.message_id;
  const base = (t: Target) => ({ queue_id: queueId, tenant: message.tenant, campaign: message.campaign, rcpt: t.rcpt });
  const suppress = (t: Target, event: string, seq: number, reason: 'hard_bounce' | 'bounce' | 'complaint', detail: string | null) => {
    if (deps.suppressions.addIn(tx, message.tenant, t.rcpt, { reason, detail, queue_id: queueId, source: { event, seq } })) outcome.suppressed.push(t.rcpt);
  };

  for (const t of plan.targets) {
    const r = t.report;
    const c = r.classification;
    if (report.kind === 'arf') {
      const f = report.feedback;
      const seq = emit('complained', {
        ...base(t),
        ...from,
        feedback_type: f?.type ?? null,
        user_agent: f?.user_agent ?? null,
        source_ip: f?.source_ip ?? null,
        arrival_date: f?.arrival_date ?? null,
        original_rcpt: f?.original_rcpt ?? r.address,
        category: r.category,
      }, t.rcpt);
      deps.spool.noteReportIn(queueId, t.i, { at: now, type: 'complained', response: `complaint: ${f?.type ?? 'untyped'}` });
      if (c.action === 'suppress') suppress(t, 'complained', seq, 'complaint', f?.type ?? null);
    } else if (report.kind === 'autoreply') {
      emit('autoreply', { ...base(t), ...from, from: r.address }, t.rcpt);
      deps.spool.noteReportIn(queueId, t.i, { at: now, type: 'autoreply', response: report.detail });
    } else if (r.action && POSITIVE.has(r.action)) {
      emit('dsn_delivered', { ...base(t), ...from, action: r.action, status: r.status, diagnostic: r.diagnostic, remote_mta: r.remote_mta }, t.rcpt);
    } else if (r.action === 'delayed') {
      // the remote end is still trying: nothing to suppress; a failure, if it comes, is a report of its own
      emit('delayed', { ...base(t), ...from, category: r.category, status: r.status, action: r.action, diagnostic: r.diagnostic, remote_mta: r.remote_mta }, t.rcpt);
      deps.spool.noteReportIn(queueId, t.i, { at: now, type: 'dsn_delayed', response: r.diagnostic ?? r.status ?? undefined, mx: r.remote_mta ?? undefined });
    } else {
      const seq = emit('bounced', {
        ...base(t),
        ...from,
        category: r.category,
        hard: r.hard,
        status: r.status,
        action: r.action,
        diagnostic: r.diagnostic,
        remote_mta: r.remote_mta,
        rule: c.rule,
      }, t.rcpt);
      deps.spool.noteReportIn(queueId, t.i, { at: now, type: 'bounced', response: r.diagnostic ?? r.status ?? undefined, mx: r.remote_mta ?? undefined });
      if (c.action === 'suppress') suppress(t, 'bounced', seq, r.hard ? 'hard_bounce' : 'bounce', r.category);
      else if (c.action === 'count' && deps.suppressions.softBounceIn(tx, message.tenant, t.rcpt, r.category, queueId, now, { event: 'bounced', seq })) outcome.suppressed.push(t.rcpt);
    }
  }
}
