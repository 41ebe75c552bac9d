/** A small client for the control API in tests: JSON in, status + JSON (and headers) out. */
import nodemailer from 'nodemailer';
import type { Sink, SinkMessage } from '../../bench/sink.js';

export interface Answer {
  status: number;
  body: any;
  headers: Headers;
}

export interface CallOptions {
  /** Bearer token (API key or operator token) */
  token?: string | null;
  body?: unknown;
  /** a raw body, sent as is */
  raw?: string;
  headers?: Record<string, string>;
  cookie?: string;
}

export function controlApi(port: number) {
  return async (method: string, path: string, opts: CallOptions = {}): Promise<Answer> => {
    const headers: Record<string, string> = { ...opts.headers };
    if (opts.token) headers.authorization = `Bearer ${opts.token}`;
    if (opts.cookie) headers.cookie = opts.cookie;
    if (opts.body !== undefined || opts.raw !== undefined) headers['content-type'] ??= 'application/json';
    const res = await fetch(`http://127.0.0.1:${port}${path}`, { method, headers, body: opts.raw ?? (opts.body === undefined ? undefined : JSON.stringify(opts.body)) });
    const text = await res.text();
    let body: unknown = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch {
      body = text;
    }
    return { status: res.status, body, headers: res.headers };
  };
}

/** Sends one message through SMTP submission with AUTH; resolves with its queue id (throws the SMTP error). */
export async function sendAs(port: number, auth: { user: string; pass: string }, to: string | string[], opts: { from?: string; subject?: string } = {}): Promise<string> {
  const info = await nodemailer
    .createTransport({ host: '127.0.0.1', port, auth, ignoreTLS: true })
    .sendMail({ from: opts.from ?? 'app@sender.tern.test', to, subject: opts.subject ?? 'hello', text: 'x' });
  return /queued as (\S+)/.exec(info.response)![1]!;
}

/** The text of the first kept sink message to `rcpt` (with `subject` in it), waiting for it. */
export async function mailTo(sink: Sink, rcpt: string, subject: RegExp, timeoutMs = 15_000): Promise<string> {
  const find = () => sink.messages.find((m: SinkMessage) => m.to.includes(rcpt) && subject.test(m.data?.toString('utf8') ?? ''));
  await sink.waitFor(() => Boolean(find()), timeoutMs);
  return find()!.data!.toString('utf8');
}

/** The token in a link `…?token=<43 chars>` of a mail. */
export function tokenIn(mail: string): string {
  const m = /token=([A-Za-z0-9_-]{43})/.exec(mail);
  if (!m) throw new Error(`no token in mail:\n${mail}`);
  return m[1]!;
}

/** The session cookie of a login answer, as a Cookie header value. */
export function sessionCookie(a: Answer): string {
  const set = a.headers.get('set-cookie') ?? '';
  const m = /tern_session=([^;]+)/.exec(set);
  if (!m) throw new Error(`no session cookie in ${set}`);
  return `tern_session=${m[1]}`;
}
