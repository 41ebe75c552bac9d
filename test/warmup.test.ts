/**
 * IP warmup over real sockets: a source on a plan sends exactly its day's cap and the rest goes out through
 * the warm source of its pool; the count survives a restart; a new (simulated) day raises the cap; a pool
 * with no warm source keeps the overflow queued until the next day.
 */
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { runLoad } from '../bench/loadgen.js';
import { startSink, type Sink } from '../bench/sink.js';
import { ROOT, startTestNode, tempDir, testConfigDoc, writeYaml } from './support/node.js';
import type { TernNode } from '../src/node.js';

const TOKEN = 'warmup-test-operator-token-0123';
const DAY = 86_400_000;
let sink: Sink;
let node: TernNode;
const dataDir = tempDir();
// the warmup calendar's clock: moved forward a day to simulate the day roll
let offset = 0;
const clock = () => Date.now() + offset;
const today = new Date().toISOString().slice(0, 10);

const overrides = () => ({
  routes: [{ domain: '*.tern.test', host: '127.0.0.1', port: sink.port }],
  pools: {
    default: {
      sources: [
        { name: 'ip2', address: '127.0.0.2', ehlo: 'ip2.tern.test', warmup: { plan: 'tiny', start: today } },
        { name: 'ip3', address: '127.0.0.3', ehlo: 'ip3.tern.test' },
      ],
    },
    cold: { sources: [{ name: 'ip4', address: '127.0.0.4', ehlo: 'ip4.tern.test', warmup: { plan: 'tiny', start: today } }] },
  },
  tenants: { default: { pool: 'default' }, newco: { pool: 'cold' } },
  smtp_users: [
    { username: 'tenant1', password: 'secret-1', tenant: 'default' },
    { username: 'newco', password: 'secret-2', tenant: 'newco' },
  ],
  warmup: { plans: { tiny: { days: [5, 8] } } },
  control: { admin_token: TOKEN },
  retry: { schedule: ['1h'] },
});

beforeAll(async () => {
  sink = await startSink();
  node = await startTestNode(overrides(), { dataDir, clock });
});

afterAll(async () => {
  await node?.stop();
  await sink?.close();
});

const send = async (count: number, prefix: string, user = 'tenant1', pass = 'secret-1') => {
  const load = await runLoad({ host: '127.0.0.1', port: node.ports.submission, count, connections: 4, size: 400, auth: { user, pass }, idPrefix: prefix, recipients: (n) => [`${prefix}${n}@dest.tern.test`] });
  expect(load.accepted).toBe(count);
  return load.acceptedIds;
};
const delivered = (ids: string[]) => sink.waitFor(() => ids.every((id) => sink.idCounts.get(id) === 1), 20_000);
const from = (ids: string[], address: string) => sink.messages.filter((m) => m.id && ids.includes(m.id) && m.remoteAddress === address).length;
const status = async (source: string) => {
  const res = await fetch(`http://127.0.0.1:${node.ports.control}/api/v1/warmup/${source}`, { headers: { authorization: `Bearer ${TOKEN}` } });
  expect(res.status).toBe(200);
  return (await res.json()) as { day: number; cap: number | null; sent_today: number; state: string };
};

it('sends exactly the day cap from the warming source and spills the rest to the warm one', async () => {
  const ids = await send(20, 'a');
  await delivered(ids);
  expect(from(ids, '127.0.0.2')).toBe(5);
  expect(from(ids, '127.0.0.3')).toBe(15);
  expect(await status('ip2')).toMatchObject({ day: 1, cap: 5, sent_today: 5, state: 'warming' });
  const metrics = await (await fetch(`http://127.0.0.1:${node.ports.control}/metrics`)).text();
  expect(metrics).toMatch(/tern_warmup_cap\{source="ip2",provider=""\} 5/);
  expect(metrics).toMatch(/tern_warmup_sent_today\{source="ip2",provider=""\} 5/);
});

it('keeps the day count across a restart', async () => {
  await node.stop();
  node = await startTestNode(overrides(), { dataDir, clock });
  expect(await status('ip2')).toMatchObject({ day: 1, sent_today: 5 });
  const ids = await send(10, 'b');
  await delivered(ids);
  expect(from(ids, '127.0.0.2')).toBe(0);
  expect(from(ids, '127.0.0.3')).toBe(10);
});

it('raises the cap on the next day, because the source sent today', async () => {
  offset += DAY;
  node.warmup.roll();
  expect(await status('ip2')).toMatchObject({ day: 2, cap: 8, sent_today: 0 });
  const ids = await send(20, 'c');
  await delivered(ids);
  expect(from(ids, '127.0.0.2')).toBe(8);
  expect(from(ids, '127.0.0.3')).toBe(12);
});

it('keeps mail queued when no source of the pool has room, and sends it when the next day begins', async () => {
  const ids = await send(7, 'd', 'newco', 'secret-2');
  await sink.waitFor(() => ids.filter((id) => sink.idCounts.get(id) === 1).length === 5, 20_000);
  await new Promise((r) => setTimeout(r, 500));
  expect(ids.filter((id) => sink.idCounts.has(id))).toHaveLength(5); // ip4's cap on its first day
  expect(await status('ip4')).toMatchObject({ day: 1, cap: 5, sent_today: 5 });

  offset += DAY;
  node.warmup.roll();
  await delivered(ids); // the two that waited go out at the roll, not at their retry time an hour later
  expect(from(ids, '127.0.0.4')).toBe(7);
  expect(await status('ip4')).toMatchObject({ day: 2, cap: 8, sent_today: 2 });
  // the same roll ended ip2's plan (two days, both sent on): it is warm and uncapped
  expect(await status('ip2')).toMatchObject({ day: 3, cap: null, state: 'warm' });
});

it('shows the warmup state with `tern warmup`', async () => {
  const config = writeYaml(path.join(tempDir(), 'tern.yaml'), testConfigDoc(tempDir(), { listeners: { control: { port: node.ports.control } }, control: { admin_token: TOKEN } }));
  const run = (...args: string[]) => promisify(execFile)(process.execPath, [path.join(ROOT, 'bin/tern.js'), 'warmup', ...args, '--config', config], { cwd: ROOT, env: { ...process.env, TERN_ADMIN_TOKEN: '' } });
  const json = JSON.parse((await run('--json')).stdout) as { sources: Array<{ source: string; state: string }> };
  expect(json.sources.map((s) => [s.source, s.state])).toEqual([['ip2', 'warm'], ['ip4', 'warming']]);
  const table = (await run('ip4')).stdout;
  expect(table).toMatch(/^ip4\s+tiny\s+warming\s+2\s+8\s+2\s+0\s+\d{4}-\d\d-\d\d$/m);
});
