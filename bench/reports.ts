/**
 * Reports as they come back to the inbound listener, for tests and benchmarks: an RFC 3464 DSN, an RFC 5965
 * ARF complaint and an RFC 3834 auto-reply, built for a given VERP address and recipient; and a small SMTP
 * client that hands messages to a listener on one connection and returns every reply.
 */
import net from 'node:net';

export interface DsnRecipient {
  address: string;
  action?: 'failed' | 'delayed' | 'delivered' | 'relayed';
  status: string;
  diagnostic?: string;
  remoteMta?: string;
  originalRecipient?: string;
}

const date = () => new Date().toUTCString().replace('GMT', '+0000');
let counter = 0;
const boundary = (tag: string) => `${tag}.${Date.now().toString(36)}.${++counter}/mx.report.test`;

/** Headers of the returned message, with its envelope sender as Return-Path (as MTAs return it). */
function returned(verp: string, rcpt: string, messageId: string): string {
  return [`Return-Path: <${verp}>`, 'From: News <news@sender.tern.test>', `To: ${rcpt}`, 'Subject: Our news', `Date: ${date()}`, `Message-ID: ${messageId}`, 'MIME-Version: 1.0', 'Content-Type: text/plain; charset=utf-8'].join('\r\n');
}

/** A multipart/report DSN sent back to `verp` about `recipients`, with the original's headers returned. */
export function buildDsn(opts: { verp: string; recipients: DsnRecipient[]; reportingMta?: string; returnedHeadersOnly?: boolean }): string {
  const b = boundary('dsn');
  const mta = opts.reportingMta ?? 'mx.report.test';
  const first = opts.recipients[0]!;
  const perRecipient = opts.recipients
    .map((r) =>
      [
        `Final-Recipient: rfc822; ${r.address}`,
        ...(r.originalRecipient ? [`Original-Recipient: rfc822;${r.originalRecipient}`] : []),
        `Action: ${r.action ?? 'failed'}`,
        `Status: ${r.status}`,
        ...(r.remoteMta ? [`Remote-MTA: dns; ${r.remoteMta}`] : []),
        ...(r.diagnostic ? [`Diagnostic-Code: smtp; ${r.diagnostic}`] : []),
      ].join('\r\n'),
    )
    .join('\r\n\r\n');
  return [
    'Return-Path: <>',
    `From: MAILER-DAEMON@${mta} (Mail Delivery System)`,
    `To: ${opts.verp}`,
    'Subject: Undelivered Mail Returned to Sender',
    `Date: ${date()}`,
    `Message-ID: <dsn.${Date.now()}.${counter}@${mta}>`,
    'Auto-Submitted: auto-replied',
    'MIME-Version: 1.0',
    `Content-Type: multipart/report; report-type=delivery-status; boundary="${b}"`,
    '',
    'This is a MIME-encapsulated message.',
    '',
    `--${b}`,
    'Content-Description: Notification',
    'Content-Type: text/plain; charset=utf-8',
    '',
    `This is the mail system at host ${mta}.`,
    '',
    `<${first.address}>: ${first.diagnostic ?? first.status}`,
    '',
    `--${b}`,
    'Content-Description: Delivery report',
    'Content-Type: message/delivery-status',
    '',
    `Reporting-MTA: dns; ${mta}`,
    `Arrival-Date: ${date()}`,
    '',
    perRecipient,
    '',
    `--${b}`,
    `Content-Type: ${opts.returnedHeadersOnly ? 'text/rfc822-headers' : 'message/rfc822'}`,
    '',
    returned(opts.verp, first.address, `<orig.${counter}@sender.tern.test>`),
    ...(opts.returnedHeadersOnly ? [] : ['', 'Hello.']),
    '',
    `--${b}--`,
    '',
  ].join('\r\n');
}

/** An ARF complaint (as the mailbox provider's feedback loop sends it) about mail sent with envelope `verp`. */
export function buildArf(opts: { verp: string; rcpt: string; to: string; feedbackType?: string; sourceIp?: string }): string {
  const b = boundary('arf');
  return [
    'From: Feedback Loop <fbl@provider.report.test>',
    `To: ${opts.to}`,
    'Subject: Complaint about a message from your network',
    `Date: ${date()}`,
    `Message-ID: <arf.${Date.now()}.${counter}@provider.report.test>`,
    'MIME-Version: 1.0',
    `Content-Type: multipart/report; report-type=feedback-report; boundary="${b}"`,
    '',
    `--${b}`,
    'Content-Type: text/plain; charset=us-ascii',
    '',
    'This is an email abuse report.',
    '',
    `--${b}`,
    'Content-Type: message/feedback-report',
    '',
    `Feedback-Type: ${opts.feedbackType ?? 'abuse'}`,
    'User-Agent: ReportTest-FBL/1.0',
    'Version: 1',
    `Original-Mail-From: <${opts.verp}>`,
    `Original-Rcpt-To: <${opts.rcpt}>`,
    `Arrival-Date: ${date()}`,
    `Source-IP: ${opts.sourceIp ?? '192.0.2.10'}`,
    '',
    `--${b}`,
    'Content-Type: message/rfc822',
    '',
    returned(opts.verp, opts.rcpt, `<orig.arf.${counter}@sender.tern.test>`),
    '',
    'Hello.',
    '',
    `--${b}--`,
    '',
  ].join('\r\n');
}

/** An RFC 3834 out-of-office reply from `from`, sent to the envelope sender `verp`. */
export function buildAutoReply(opts: { verp: string; from: string }): string {
  return [
    'Return-Path: <>',
    `From: Reader <${opts.from}>`,
    `To: ${opts.verp}`,
    'Subject: Out of Office: Our news',
    `Date: ${date()}`,
    `Message-ID: <oof.${Date.now()}.${++counter}@report.test>`,
    'Auto-Submitted: auto-replied (vacation)',
    'MIME-Version: 1.0',
    'Content-Type: text/plain; charset=utf-8',
    '',
    'I am out of the office until Monday.',
    '',
  ].join('\r\n');
}

export interface TransactionReplies {
  mail: string;
  rcpt: string[];
  /** the reply to the end of data; null when no recipient was accepted (DATA not sent) */
  data: string | null;
}

/** One SMTP connection to a listener: EHLO once, then one transaction per `send()`. No pipelining. */
export class ReportClient {
  private buffer = '';
  private current: string[] = [];
  private readonly replies: string[] = [];
  private readonly waiters: Array<(reply: string) => void> = [];
  ehlo = '';

  private constructor(private readonly socket: net.Socket) {
    socket.on('data', (d: Buffer) => this.onData(d));
    socket.on('error', () => {});
    socket.on('close', () => {
      for (const w of this.waiters.splice(0)) w('421 connection closed');
    });
  }

  static async connect(port: number, opts: { host?: string; localAddress?: string; ehlo?: string } = {}): Promise<ReportClient> {
    const socket = net.connect({ port, host: opts.host ?? '127.0.0.1', localAddress: opts.localAddress });
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    socket.setNoDelay(true);
    const c = new ReportClient(socket);
    const greeting = await c.reply();
    if (!greeting.startsWith('220')) {
      socket.destroy();
      throw new Error(`greeting: ${greeting}`);
    }
    c.ehlo = await c.command(`EHLO ${opts.ehlo ?? 'mx.report.test'}`);
    return c;
  }

  private onData(d: Buffer): void {
    this.buffer += d.toString('latin1');
    let i;
    while ((i = this.buffer.indexOf('\r\n')) !== -1) {
      const line = this.buffer.slice(0, i);
      this.buffer = this.buffer.slice(i + 2);
      this.current.push(line);
      if (/^\d{3}(?: |$)/.test(line)) {
        const full = this.current.join('\n');
        this.current = [];
        const w = this.waiters.shift();
        if (w) w(full);
        else this.replies.push(full);
      }
    }
  }

  reply(timeoutMs = 30_000): Promise<string> {
    const r = this.replies.shift();
    if (r !== undefined) return Promise.resolve(r);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('no SMTP reply in time')), timeoutMs);
      this.waiters.push((x) => {
        clearTimeout(timer);
        resolve(x);
      });
    });
  }

  /** Writes raw bytes (after DATA, the message and its final dot). */
  write(data: string | Buffer): void {
    this.socket.write(typeof data === 'string' ? Buffer.from(data, 'latin1') : data);
  }

  command(line: string): Promise<string> {
    this.socket.write(line + '\r\n');
    return this.reply();
  }

  /** One transaction; the message is given with CRLF or LF line ends and is dot-stuffed here. */
  async send(from: string, to: string[], message: string | Buffer): Promise<TransactionReplies> {
    const mail = await this.command(`MAIL FROM:<${from}>`);
    const rcpt: string[] = [];
    if (!mail.startsWith('250')) return { mail, rcpt, data: null };
    for (const t of to) rcpt.push(await this.command(`RCPT TO:<${t}>`));
    if (!rcpt.some((r) => r.startsWith('250'))) {
      await this.command('RSET');
      return { mail, rcpt, data: null };
    }
    const go = await this.command('DATA');
    if (!go.startsWith('354')) return { mail, rcpt, data: go };
    const text = (typeof message === 'string' ? message : message.toString('latin1')).replace(/\r?\n/g, '\r\n');
    const body = text.replace(/^\./gm, '..');
    this.socket.write(Buffer.from(body + (body.endsWith('\r\n') ? '' : '\r\n') + '.\r\n', 'latin1'));
    return { mail, rcpt, data: await this.reply() };
  }

  async close(): Promise<void> {
    if (this.socket.destroyed) return;
    await this.command('QUIT').catch(() => '');
    this.socket.destroy();
  }
}

/** Hands one message to a listener on a connection of its own. */
export async function sendReport(port: number, from: string, to: string[], message: string | Buffer, opts: { localAddress?: string } = {}): Promise<TransactionReplies> {
  const c = await ReportClient.connect(port, opts);
  try {
    return await c.send(from, to, message);
  } finally {
    await c.close();
  }
}
