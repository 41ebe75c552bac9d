/**
 * Webhook signatures: `Tern-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`.
 * The timestamp is signed with the body, so a receiver that refuses old timestamps also refuses replays.
 * README "Webhooks and the live stream" documents the same algorithm for receivers.
 */
import crypto from 'node:crypto';

export const SIGNATURE_HEADER = 'tern-signature';
/** receivers should refuse a signature older than this (and we document it) */
export const SIGNATURE_TOLERANCE_S = 300;

export function sign(secret: string, body: string | Buffer, t = Math.floor(Date.now() / 1000)): string {
  const mac = crypto.createHmac('sha256', secret).update(`${t}.`).update(body).digest('hex');
  return `t=${t},v1=${mac}`;
}

/** Checks a `Tern-Signature` value the way a receiver should: a fresh timestamp and a matching v1. */
export function verify(secret: string, body: string | Buffer, header: string, now = Math.floor(Date.now() / 1000), toleranceS = SIGNATURE_TOLERANCE_S): boolean {
  const parts = new Map<string, string[]>();
  for (const item of header.split(',')) {
    const eq = item.indexOf('=');
    if (eq < 1) continue;
    const k = item.slice(0, eq).trim();
    parts.set(k, [...(parts.get(k) ?? []), item.slice(eq + 1).trim()]);
  }
  const t = Number(parts.get('t')?.[0]);
  if (!Number.isInteger(t) || Math.abs(now - t) > toleranceS) return false;
  const expected = Buffer.from(sign(secret, body, t).split('v1=')[1]!, 'hex');
  return (parts.get('v1') ?? []).some((v) => {
    const given = Buffer.from(v, 'hex');
    return given.length === expected.length && crypto.timingSafeEqual(given, expected);
  });
}
