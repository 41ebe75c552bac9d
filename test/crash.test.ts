/**
 * Nothing acknowledged is lost: inject 2,000 messages, kill -9 the node mid-delivery, start it again on the
 * same spool, and every message that got a 250 reaches the sink. Duplicates are counted.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { startSink, type Sink } from '../bench/sink.js';
import { runLoad, type LoadResult } from '../bench/loadgen.js';
import { Store } from '../src/core/store.js';
import { freePort, shapingFile, spawnNode, tempDir, testConfigDoc, writeYaml, type ChildNode } from './support/node.js';

let sink: Sink | undefined;
let child: ChildNode | undefined;

afterAll(async () => {
  child?.proc.kill('SIGKILL');
  await sink?.close();
});

it('delivers every acknowledged message after kill -9 and restart', { timeout: 180_000 }, async () => {
  // the sink answers 451 until opened, so that the whole load is queued when delivery starts
  let open = false;
  sink = await startSink({ decide: (ctx) => (ctx.stage === 'mail' && !open ? '451 4.3.2 Not ready yet' : undefined) });
  const dir = tempDir('tern-crash-');
  const ports = { submission: await freePort(), control: await freePort() };
  const connections = 4;
  const configFile = writeYaml(
    path.join(dir, 'tern.yaml'),
    testConfigDoc(path.join(dir, 'data'), {
      log: { level: 'info', file: path.join(dir, 'tern.log') },
      listeners: { submission: { port: ports.submission }, control: { port: ports.control } },
      routes: [{ domain: '*.tern.test', host: '127.0.0.1', port: sink.port }],
      shaping: { file: shapingFile({ default: { connections } }) },
      retry: { schedule: ['1s'] },
    }),
  );

  child = await spawnNode(configFile, ports);
  const load: Promise<LoadResult> = runLoad({
    host: '127.0.0.1',
    port: ports.submission,
    count: 2000,
    size: 2048,
    connections: 8,
    auth: { user: 'tenant1', pass: 'secret-1' },
    recipients: (n) => [`crash${n}@sink.tern.test`],
    idPrefix: 'crash',
    maxConnectFailures: 3,
  });
  const result = await load;
  const acked = result.acceptedIds;
  expect(acked.length).toBe(2000);
  open = true;
  // kill mid-delivery
  await sink.waitFor(() => sink!.accepted >= 300, 60_000);
  child.proc.kill('SIGKILL');
  await child.exited;
  const deliveredBeforeKill = sink.accepted;
  expect(deliveredBeforeKill).toBeLessThan(1500); // most acknowledged mail was still queued at the kill

  child = await spawnNode(configFile, ports);
  const restarted = child;
  await sink.waitFor(() => acked.every((id) => (sink!.idCounts.get(id) ?? 0) >= 1), 120_000).catch(async (err: Error) => {
    // say what the restarted node was doing: its output, whether it still runs, and its health
    const health = await fetch(`http://127.0.0.1:${ports.control}/healthz`, { signal: AbortSignal.timeout(5000) }).then((r) => r.text(), (e: Error) => `no answer: ${e.message}`);
    const log = fs.readFileSync(path.join(dir, 'tern.log'), 'utf8').split('\n').slice(-20).join('\n');
    throw new Error(`${err.message}\nrestarted node: exit code ${restarted.proc.exitCode}, /healthz ${health}\noutput:\n${restarted.output()}\nlast log lines:\n${log}`);
  });
  await new Promise((r) => setTimeout(r, 1000));

  const duplicates = [...sink.idCounts.values()].filter((n) => n > 1).length;
  const lost = acked.filter((id) => !sink!.idCounts.has(id));
  console.log(
    JSON.stringify({ acked: acked.length, delivered_before_kill: deliveredBeforeKill, delivered_total: sink.accepted, duplicates, lost: lost.length }),
  );
  expect(lost).toEqual([]);
  // a duplicate is a message that was on the wire (or delivered but not yet recorded) when the node died:
  // at most one transaction per open connection
  expect(duplicates).toBeLessThanOrEqual(connections * 2);
  child.proc.kill('SIGTERM');
  await child.exited;

  // the durable record: every accepted message has its delivered event in the spool's outbox
  const store = new Store(path.join(dir, 'data'));
  const events = store.events(0, 1_000_000);
  await store.close();
  const accepted = events.filter((e) => e.type === 'accepted');
  const deliveredIds = new Set(events.filter((e) => e.type === 'delivered').map((e) => e.queue_id));
  expect(accepted).toHaveLength(2000);
  expect(accepted.filter((e) => !deliveredIds.has(e.queue_id))).toEqual([]);

  // and each result is a JSON log line with an `event` field (the killed process may have lost its last
  // buffered lines; the restarted one stopped cleanly and logged every delivery it made)
  const lines = fs.readFileSync(path.join(dir, 'tern.log'), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));
  const deliveredLogged = new Set(lines.filter((l) => l.event === 'delivered').map((l) => l.queue_id));
  expect(deliveredLogged.size).toBeGreaterThanOrEqual(sink.accepted - deliveredBeforeKill - duplicates);
  expect(lines.some((l) => l.event === 'deferred' && /^451/.test(l.response))).toBe(true);
});
