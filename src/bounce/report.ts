/**
 * What a parsed report means: each recipient classified by the bounce rules, and the report attributed to
 * one recipient of one message we sent (by its VERP address, else its X-Tern-Ref).
 */
import { classifyResponse, decide, type BounceRules, type Category, type Classification } from './classify.js';
import type { Report, ReportRecipient } from './parse.js';
import type { VerpCodec, VerpRejection } from './verp.js';

/** A recipient with its category and hard/soft; `classification` adds what to do and the deciding rule. */
export type ClassifiedRecipient = ReportRecipient & { category: Category; hard: boolean; classification: Classification };
export type ClassifiedReport = Omit<Report, 'recipients'> & { recipients: ClassifiedRecipient[] };

const STATUS_IN = /(?<![\d.])([245]\.\d{1,3}\.\d{1,3})(?!\.?\d)/;

/** The status to classify by: the DSN's, made specific by the diagnostic when the DSN only says x.0.0. */
function statusFor(r: ReportRecipient): string | null {
  const fromDiagnostic = r.diagnostic ? (STATUS_IN.exec(r.diagnostic)?.[1] ?? null) : null;
  if (r.status && /\.0\.0$/.test(r.status) && fromDiagnostic && fromDiagnostic[0] === r.status[0]) return fromDiagnostic;
  if (r.status || fromDiagnostic || r.reply_code !== null) return r.status ?? fromDiagnostic;
  // nothing but the Action: failed is permanent, delayed temporary
  switch (r.action) {
    case 'failed':
      return '5.0.0';
    case 'delayed':
      return '4.0.0';
    case 'delivered':
    case 'relayed':
    case 'expanded':
      return '2.0.0';
    default:
      return null;
  }
}

/** A complaint suppresses the complainant; a "not spam" report or an authentication failure report does not. */
function feedbackClassification(type: string | null): Classification {
  const quiet = type === 'not-spam' || type === 'auth-failure';
  return decide('feedback', false, quiet ? 'none' : 'suppress', null, `arf ${type ?? 'untyped'}`);
}

/** Fills category, hard, action and rule for each recipient. DSN recipients go through classifyResponse(). */
export function classifyReport(report: Report, rules: BounceRules): ClassifiedReport {
  const recipients = report.recipients.map((r): ClassifiedRecipient => {
    const c =
      report.kind === 'arf'
        ? feedbackClassification(report.feedback?.type ?? null)
        : report.kind === 'autoreply'
          ? decide('vacation', false, 'none', null, 'autoreply')
          : classifyResponse(rules, { status: statusFor(r), code: r.reply_code, text: r.diagnostic });
    return { ...r, category: c.category, hard: c.hard, classification: c };
  });
  return { ...report, recipients };
}

export interface Attribution {
  /** our queue id (the spool's msgId) */
  message_id: string;
  /** index of the recipient in that message's recipient list (the spool knows the address) */
  recipient: number;
}

export interface AttributeOptions {
  /** the RCPT TO addresses of the SMTP transaction that brought the report: tried first */
  envelope?: string[];
  /** called for each address or ref that looked like ours but did not verify (worth a log line) */
  onRejected?: (candidate: string, reason: Exclude<VerpRejection, 'not-verp'>) => void;
}

/**
 * The recipient a report is about: the first candidate address that is a valid VERP address of ours,
 * else the X-Tern-Ref of the returned message. Null when neither verifies: a forged or altered token never
 * attributes.
 */
export function attributeReport(report: Pick<Report, 'envelopeCandidates' | 'original'>, codec: VerpCodec, opts: AttributeOptions = {}): Attribution | null {
  for (const candidate of [...(opts.envelope ?? []), ...report.envelopeCandidates]) {
    const r = codec.verify(candidate);
    if (r.ok) return { message_id: r.msgId, recipient: r.rcptIndex };
    if (r.reason !== 'not-verp') opts.onRejected?.(candidate, r.reason);
  }
  if (report.original.ref) {
    const r = codec.verifyRef(report.original.ref);
    if (r.ok) return { message_id: r.msgId, recipient: r.rcptIndex };
    if (r.reason !== 'not-verp') opts.onRejected?.(report.original.ref, r.reason);
  }
  return null;
}

/** One line of `tern bounce parse` output: exactly these fields, unknown ones null. */
export interface ReportLine {
  file: string;
  kind: Report['kind'];
  recipients: Array<Omit<ReportRecipient, 'original_recipient'> & { category: string; hard: boolean }>;
  feedback: { type: string | null; user_agent: string | null; original_rcpt: string | null } | null;
  attribution: Attribution | null;
}

export function reportLine(file: string, report: ClassifiedReport, attribution: Attribution | null): ReportLine {
  return {
    file,
    kind: report.kind,
    recipients: report.recipients.map((r) => ({
      address: r.address,
      action: r.action,
      status: r.status,
      reply_code: r.reply_code,
      diagnostic: r.diagnostic,
      remote_mta: r.remote_mta,
      category: r.category,
      hard: r.hard,
    })),
    feedback: report.feedback ? { type: report.feedback.type, user_agent: report.feedback.user_agent, original_rcpt: report.feedback.original_rcpt } : null,
    attribution: attribution ? { message_id: attribution.message_id, recipient: attribution.recipient } : null,
  };
}
