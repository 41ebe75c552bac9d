/**
 * Mail the node sends about accounts (password resets, invitations), through Tern itself: the message goes
 * through the same acceptance pipeline (src/mta/acceptance.ts: suppression, preparation, DKIM for the From
 * domain, sender-domain check, fsynced spool) as a tenant's, for the node's own `default` tenant, campaign `tern-account`, stream transactional.
 */
import type { Logger } from '../core/log.js';
import type { Acceptance } from '../mta/acceptance.js';
import { isHeaderSafe, isMailbox } from './validate.js';

export interface SystemMail {
  to: string;
  subject: string;
  /** plain text; lines are joined with CRLF */
  lines: string[];
}

export interface Mailer {
  /** Spools a message and resolves with its queue id once it is durable; null when the address is suppressed. */
  send(mail: SystemMail): Promise<string | null>;
}

export const SYSTEM_TENANT = 'default';
export const SYSTEM_CAMPAIGN = 'tern-account';

/** The RFC 5322 message for `mail`; refuses anything that could add a header or break a line. */
export function composeSystemMail(mail: SystemMail, from: string): Buffer {
  if (!isMailbox(mail.to) || !isMailbox(from)) throw new Error('system mail: not a mail address');
  if (!isHeaderSafe(mail.subject) || !mail.lines.every(isHeaderSafe)) throw new Error('system mail: control characters in the subject or body');
  if (mail.lines.some((l) => Buffer.byteLength(l) > 900)) throw new Error('system mail: a body line is too long');
  const utf8 = /[^\x00-\x7f]/.test(mail.subject + mail.lines.join(''));
  const subject = /[^\x00-\x7f]/.test(mail.subject) ? `=?UTF-8?B?${Buffer.from(mail.subject).toString('base64')}?=` : mail.subject;
  const headers = [
    `From: Tern <${from}>`,
    `To: <${mail.to}>`,
    `Subject: ${subject}`,
    'MIME-Version: 1.0',
    `Content-Type: text/plain; charset=${utf8 ? 'utf-8' : 'us-ascii'}`,
    `Content-Transfer-Encoding: ${utf8 ? '8bit' : '7bit'}`,
    'Auto-Submitted: auto-generated',
    `X-Tern-Campaign: ${SYSTEM_CAMPAIGN}`,
    'X-Tern-Stream: transactional',
  ];
  // a body line of a lone "." is fine: the spool stores bytes, and the SMTP client dot-stuffs on the way out
  return Buffer.from(`${headers.join('\r\n')}\r\n\r\n${mail.lines.join('\r\n')}\r\n`, 'utf8');
}

export class SystemMailer implements Mailer {
  constructor(private readonly deps: { acceptance: Acceptance; log: Logger; from: string }) {}

  async send(mail: SystemMail): Promise<string | null> {
    const { acceptance, log, from } = this.deps;
    // a buffer of its own (not a slice of Node's shared pool) so it can be moved to a worker thread
    const composed = composeSystemMail(mail, from);
    const raw = Buffer.allocUnsafeSlow(composed.length);
    composed.copy(raw);
    // account mail is never tracked (its links carry tokens of their own) and the default tenant's quota does
    // not hold it back: a password reset must go out
    const result = await acceptance.accept({ tenant: SYSTEM_TENANT, sender: from, recipients: [mail.to], raw, utf8: /[^\x00-\x7f]/.test(mail.to), listener: 'control', tracking: false, quota: false });
    if (!result.ok) throw new Error(`system mail refused at ${result.step}: ${'reason' in result ? result.reason : result.refusal.smtp.text}`);
    const suppressed = result.recipients[0]!.status === 'suppressed';
    log.info({ queue_id: result.queueId, subject: mail.subject, suppressed }, 'system mail queued');
    return suppressed ? null : result.queueId;
  }
}
