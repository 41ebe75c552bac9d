/**
 * `tern queue …`: the queue administration routes (/api/v1/queues) from the command line. It finds the
 * control listener and the operator token in the config file (TERN_ADMIN_TOKEN wins), like `tern reload`.
 * Tables for people by default, the API's JSON with --json.
 */
import { parseArgs } from 'node:util';
import type { Config } from '../core/config.js';
import { controlClient } from './client.js';

export const QUEUE_USAGE = `  tern queue list [--tenant T] [--campaign C] [--domain D] [--source S] [--limit N] [--cursor X] [--json]
                                      scheduled and ready queues: depth, age, limits, holds
  tern queue suspend SELECTORS --reason TEXT [--duration 2h] [--json]
                                      hold the selected mail (SELECTORS: any of --tenant --campaign --domain --source)
  tern queue resume HOLD_ID | SELECTORS
                                      end a hold (by id, or every hold with exactly these selectors)
  tern queue suspensions [--json]     operator holds and running backoff actions
  tern queue fail SELECTORS --reason TEXT [--json]
                                      fail every selected queued recipient (554 5.0.0 Failed by operator)
  tern queue retry SELECTORS | --message QUEUE_ID [--json]
                                      make the selected mail due now (attempts are not counted)
  tern queue show QUEUE_ID [--json]   one message: recipients' state and history
  (every queue command takes --config FILE to find the node's control listener and operator token)`;

class UsageError extends Error {}

const SELECTOR_OPTIONS = ['tenant', 'campaign', 'domain', 'source'] as const;

const COMMANDS = ['list', 'suspensions', 'suspend', 'resume', 'fail', 'retry', 'show'];

export async function queueCommand(argv: string[], config: (file: string | undefined) => Config): Promise<number> {
  const [sub, ...rest] = argv;
  if (!sub || !COMMANDS.includes(sub)) return usage(sub ? `unknown queue command "${sub}"` : 'which queue command?');
  let parsed;
  try {
    parsed = parseArgs({
      args: rest,
      allowPositionals: true,
      options: {
        tenant: { type: 'string' },
        campaign: { type: 'string' },
        domain: { type: 'string' },
        source: { type: 'string' },
        reason: { type: 'string' },
        duration: { type: 'string' },
        message: { type: 'string' },
        limit: { type: 'string' },
        cursor: { type: 'string' },
        json: { type: 'boolean', default: false },
        config: { type: 'string', short: 'c' },
      },
    });
  } catch (err) {
    return usage((err as Error).message);
  }
  const { values: v, positionals } = parsed;
  const selectors = Object.fromEntries(SELECTOR_OPTIONS.filter((k) => v[k] !== undefined).map((k) => [k, v[k]!]));
  const api = controlClient(config(v.config), 'tern queue');
  try {
    switch (sub) {
      case 'list': {
        const query = new URLSearchParams({ ...selectors, ...(v.limit ? { limit: v.limit } : {}), ...(v.cursor ? { cursor: v.cursor } : {}) });
        const out = await api('GET', `/api/v1/queues${query.size ? `?${query}` : ''}`);
        return print(v.json, out, () => listTable(out as ListOut));
      }
      case 'suspensions': {
        const out = await api('GET', '/api/v1/queues/suspensions');
        return print(v.json, out, () => suspensionsTable(out as SuspensionsOut));
      }
      case 'suspend': {
        if (!v.reason) throw new UsageError('tern queue suspend: --reason is required (say why, for the log and the other operators)');
        const out = (await api('POST', '/api/v1/queues/suspend', { ...selectors, reason: v.reason, ...(v.duration ? { duration: v.duration } : {}) })) as { hold: HoldOut };
        return print(v.json, out, () => `Suspended ${describe(out.hold)} (hold ${out.hold.id}) ${until(out.hold.until)}: ${out.hold.reason}\n`);
      }
      case 'resume': {
        if (positionals.length > 1) throw new UsageError('tern queue resume: give one hold id, or selectors');
        const body = positionals[0] ? { id: positionals[0] } : selectors;
        const out = (await api('POST', '/api/v1/queues/resume', body)) as { resumed: HoldOut[] };
        return print(v.json, out, () => out.resumed.map((h) => `Resumed ${describe(h)} (hold ${h.id})\n`).join(''));
      }
      case 'fail': {
        if (!v.reason) throw new UsageError('tern queue fail: --reason is required (it goes into each failure: "554 5.0.0 Failed by operator: <reason>")');
        const out = (await api('POST', '/api/v1/queues/fail', { ...selectors, reason: v.reason })) as { failed: number; in_flight: number };
        return print(v.json, out, () => `Failed ${out.failed} recipient(s)${out.in_flight ? `; ${out.in_flight} on the wire fail if their attempt is deferred` : ''}\n`);
      }
      case 'retry': {
        const body = v.message ? { message_id: v.message } : selectors;
        const out = (await api('POST', '/api/v1/queues/retry', body)) as { retried: number; already_due: number; held: number; in_flight: number };
        return print(v.json, out, () => `Made ${out.retried} recipient(s) due now (already due: ${out.already_due}, held: ${out.held}, on the wire: ${out.in_flight})\n`);
      }
      case 'show': {
        if (positionals.length !== 1) throw new UsageError('tern queue show: give one queue id (the id in "250 … queued as ID")');
        const out = await api('GET', `/api/v1/queues/messages/${encodeURIComponent(positionals[0]!)}`);
        return print(v.json, out, () => messageText(out as MessageOut));
      }
      default:
        return usage(`unknown queue command "${sub}"`);
    }
  } catch (err) {
    if (err instanceof UsageError) return usage(err.message);
    process.stderr.write(`${(err as Error).message}\n`);
    return 1;
  }
}

function usage(problem: string): number {
  process.stderr.write(`${problem}\nusage:\n${QUEUE_USAGE}\n`);
  return 2;
}

function print(json: boolean | undefined, out: unknown, text: () => string): number {
  process.stdout.write(json ? `${JSON.stringify(out, null, 2)}\n` : text());
  return 0;
}

/** Calls the node's control listener with the operator token; an error answer becomes a thrown sentence. */
// ── human-readable output ──

interface HoldOut {
  id: string;
  tenant: string | null;
  campaign: string | null;
  domain: string | null;
  source: string | null;
  reason: string;
  since: number;
  until: number | null;
}
interface HoldRef {
  id: string;
  reason: string;
  until: number | null;
}
interface ListOut {
  scheduled: Array<{ queue: string; recipients: number; messages: number; oldest_age_s: number; next_due_at: number; held: HoldRef[] }>;
  ready: Array<{ queue: string; recipients: number; connections: number; oldest_age_s: number | null; limits: Record<string, unknown>; suspended_until: number | null; throttle: string | null; held: HoldRef[] }>;
  totals: { scheduled_queues: number; scheduled_recipients: number; ready_queues: number; ready_recipients: number; queued_recipients: number };
  next_cursor: string | null;
}
interface SuspensionsOut {
  holds: HoldOut[];
  backoff: Array<{ id: string; rule: string; action: string; source: string | null; site: string; until: number; rate: string | null; cause: string }>;
}
interface MessageOut {
  queue_id: string;
  message_id: string;
  tenant: string;
  campaign: string;
  sender: string;
  size: number;
  created_at: number;
  pending: number;
  recipients: Array<{ rcpt: string; status: string; attempts: number; next_at: number | null; last_reply: string | null; queue: string; held: HoldRef[] }>;
  history: Array<{ at: number; type: string; rcpt: string | null; attempt?: number; response?: string; mx?: string; source?: string; by?: string }>;
}

const iso = (ms: number) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
const until = (ms: number | null) => (ms === null ? 'until resumed' : `until ${iso(ms)}`);
const describe = (h: HoldOut) => (['tenant', 'campaign', 'domain', 'source'] as const).filter((k) => h[k] !== null).map((k) => `${k}=${h[k]}`).join(' ');

function age(seconds: number | null): string {
  if (seconds === null) return '-';
  if (seconds < 120) return `${seconds}s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)}m`;
  if (seconds < 172_800) return `${Math.round(seconds / 3600)}h`;
  return `${Math.round(seconds / 86_400)}d`;
}

function due(at: number): string {
  const s = Math.round((at - Date.now()) / 1000);
  return s <= 0 ? 'now' : `in ${age(s)}`;
}

function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd();
  return [line(header), ...rows.map(line)].join('\n') + '\n';
}

function listTable(out: ListOut): string {
  const held = (hs: HoldRef[]) => hs.map((h) => `held ${h.id} ${until(h.until)}: ${h.reason}`).join('; ');
  const scheduled = out.scheduled.length
    ? table(['SCHEDULED QUEUE', 'RCPTS', 'MSGS', 'OLDEST', 'NEXT', 'STATE'], out.scheduled.map((q) => [q.queue, String(q.recipients), String(q.messages), age(q.oldest_age_s), due(q.next_due_at), held(q.held)]))
    : 'no scheduled queues\n';
  const ready = out.ready.length
    ? table(
        ['READY QUEUE', 'RCPTS', 'CONNS', 'OLDEST', 'LIMITS', 'STATE'],
        out.ready.map((q) => {
          const state = [q.suspended_until ? `backoff: suspended until ${iso(q.suspended_until)}` : '', q.throttle ? `backoff: throttled to ${q.throttle}` : '', held(q.held)].filter(Boolean).join('; ');
          const limits = `${q.connections}/${q.limits.connections} conns${q.limits.rate ? `, ${q.limits.rate}` : ''}`;
          return [q.queue, String(q.recipients), String(q.connections), age(q.oldest_age_s), limits, state];
        }),
      )
    : 'no ready queues\n';
  const t = out.totals;
  const more = out.next_cursor ? `more: --cursor ${out.next_cursor}\n` : '';
  return `${scheduled}\n${ready}\n${t.queued_recipients} recipient(s) queued; ${t.scheduled_queues} scheduled queue(s) and ${t.ready_queues} ready queue(s) match\n${more}`;
}

function suspensionsTable(out: SuspensionsOut): string {
  const holds = out.holds.length
    ? table(['HOLD', 'SELECTS', 'SINCE', 'UNTIL', 'REASON'], out.holds.map((h) => [h.id, describe(h), iso(h.since), h.until === null ? 'resumed' : iso(h.until), h.reason]))
    : 'no operator holds\n';
  const backoff = out.backoff.length
    ? table(['BACKOFF', 'ACTION', 'SOURCE -> SITE', 'UNTIL', 'CAUSE'], out.backoff.map((a) => [a.id, a.action + (a.rate ? ` ${a.rate}` : ''), `${a.source ?? 'every source'} -> ${a.site}`, iso(a.until), a.cause]))
    : 'no backoff actions\n';
  return `${holds}\n${backoff}`;
}

function messageText(m: MessageOut): string {
  const head = [
    `queue id    ${m.queue_id}`,
    `message-id  ${m.message_id}`,
    `tenant      ${m.tenant}    campaign ${m.campaign}`,
    `sender      ${m.sender}`,
    `size        ${m.size} bytes, accepted ${iso(m.created_at)}, ${m.pending} recipient(s) pending`,
    '',
  ].join('\n');
  const rcpts = table(
    ['RECIPIENT', 'STATUS', 'ATTEMPTS', 'NEXT', 'LAST REPLY'],
    m.recipients.map((r) => [r.rcpt, r.status + (r.held.length ? ` (held ${r.held.map((h) => h.id).join(',')})` : ''), String(r.attempts), r.next_at === null ? '-' : due(r.next_at), r.last_reply ?? '-']),
  );
  const history = m.history
    .map((h) => `  ${iso(h.at)}  ${h.type.padEnd(9)} ${h.rcpt ?? ''}${h.attempt ? ` #${h.attempt}` : ''}${h.by ? ` by ${h.by}` : ''}${h.response ? `  ${h.response}` : ''}${h.mx ? `  via ${h.mx}` : ''}${h.source ? ` from ${h.source}` : ''}`)
    .join('\n');
  return `${head}\n${rcpts}\nhistory:\n${history}\n`;
}
