/**
 * How Tern's SMTP listeners reply, on top of smtp-server:
 * - with our own enhanced status codes. smtp-server adds a code chosen from the reply code alone (550 always
 *   becomes 5.1.1 "mailbox unavailable", which a bounce classifier would read as a dead address), so a reply
 *   whose text already starts with an enhanced code is sent without the added one;
 * - the replies made in one turn of the event loop go out in one write: a client that pipelines MAIL, RCPT
 *   and DATA gets its three replies in one segment instead of three (smtp-server writes each on its own).
 *   Not 220 (STARTTLS: the TLS handshake takes the socket right after it) nor 221/421 (the session ends).
 */
import type net from 'node:net';
import { SMTPConnection } from 'smtp-server/lib/smtp-connection.js';

const ENHANCED = /^[245]\.\d{1,3}\.\d{1,3} /;
type Send = (code: number, data?: string | string[], context?: string | false) => void;
const proto = SMTPConnection.prototype as unknown as { send: Send; __ternPatched?: boolean };
const uncork = (socket: net.Socket) => socket.uncork();
if (!proto.__ternPatched) {
  const original = proto.send;
  proto.send = function (this: { _socket?: net.Socket }, code, data, context) {
    const socket = this._socket;
    if (socket) {
      if (code === 220 || code === 221 || code === 421) {
        if (socket.writableCorked) socket.uncork(); // what was gathered goes first, this one right behind it
      } else if (!socket.writableCorked) {
        socket.cork();
        process.nextTick(uncork, socket);
      }
    }
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
