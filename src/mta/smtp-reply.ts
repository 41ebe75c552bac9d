/**
 * SMTP replies with our own enhanced status codes. smtp-server adds a code chosen from the reply code alone
 * (550 always becomes 5.1.1 "mailbox unavailable", which a bounce classifier would read as a dead address),
 * so a reply whose text already starts with an enhanced code is sent without the added one.
 */
import { SMTPConnection } from 'smtp-server/lib/smtp-connection.js';

const ENHANCED = /^[245]\.\d{1,3}\.\d{1,3} /;
type Send = (code: number, data?: string | string[], context?: string | false) => void;
const proto = SMTPConnection.prototype as unknown as { send: Send; __ternPatched?: boolean };
if (!proto.__ternPatched) {
  const original = proto.send;
  proto.send = function (this: unknown, code, data, context) {
    return original.call(this, code, data, typeof data === 'string' && ENHANCED.test(data) ? false : context);
  };
  proto.__ternPatched = true;
}

export class SmtpReplyError extends Error {
  constructor(public readonly responseCode: number, public readonly status: string, text: string) {
    super(`${status} ${text}`);
    this.name = 'SmtpReplyError';
  }
}

export const smtpError = (code: number, status: string, text: string) => new SmtpReplyError(code, status, text);
