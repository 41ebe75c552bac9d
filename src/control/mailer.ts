/**
 * Mail the node sends about accounts (password resets, invitations), through Tern itself: the message goes
 * through the same preparation (headers, DKIM for the From domain), suppression check and fsynced spool as
 * a tenant's, for the node's own `default` tenant, campaign `tern-account`, stream transactional.
 */
import type { Config } from '../core/config.js';
import type { Logger } from '../core/log.js';
import type { Preparer } from '../mta/prepare-pool.js';
import type { Scheduler } from '../mta/queues.js';
import { newMessageId, type Spool } from '../mta/spool.js';
import type { SuppressionList } from '../bounce/suppression.js';
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
  constructor(private readonly deps: { config: Config; spool: Spool; scheduler: Scheduler; preparer: Preparer; suppressions: SuppressionList; log: Logger; from: string }) {}

  async send(mail: SystemMail): Promise<string | null> {
    const { config, spool, scheduler, preparer, suppressions, log, from } = this.deps;
    const msgId = newMessageId();
    const utf8 = /[^\x00-\x7f]/.test(mail.to);
    // a buffer of its own (not a slice of Node's shared pool) so it can be moved to a worker thread
    const composed = composeSystemMail(mail, from);
    const raw = Buffer.allocUnsafeSlow(composed.length);
    composed.copy(raw);
    const prepared = await preparer.prepare({ raw, hostname: config.hostname, id: msgId, utf8, tenant: SYSTEM_TENANT, feedbackSenderId: config.bounce.feedbackSenderId });
    if (!prepared.ok) throw new Error(`system mail refused by preparation: ${prepared.reason}`);
    const entry = suppressions.get(SYSTEM_TENANT, mail.to);
    const stored = await spool.accept({
      msgId,
      tenant: SYSTEM_TENANT,
      campaign: prepared.campaign,
      sender: from,
      recipients: entry ? [] : [mail.to],
      suppressed: entry ? [{ to: mail.to, reason: entry.reason, detail: entry.detail }] : [],
      body: prepared.message,
      messageId: prepared.messageId,
      listener: 'control',
    });
    scheduler.enqueue(stored.jobs);
    log.info({ queue_id: stored.msgId, subject: mail.subject, suppressed: Boolean(entry) }, 'system mail queued');
    return entry ? null : stored.msgId;
  }
}
