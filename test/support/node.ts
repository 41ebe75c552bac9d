/** Starting real Tern nodes for tests: in-process, or as a child process that can be killed with SIGKILL. */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import YAML from 'yaml';
import { pino } from 'pino';
import { buildConfig } from '../../src/core/config.js';
import { TernNode } from '../../src/node.js';
import type { Store, TernEvent } from '../../src/core/store.js';

export const ROOT = path.resolve(import.meta.dirname, '..', '..');

export function tempDir(prefix = 'tern-test-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

export async function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, host, () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

/** A config for tests: ephemeral ports, a temp data dir, quiet logs, one SMTP user. Deep-merges `overrides`. */
export function testConfigDoc(dataDir: string, overrides: Record<string, unknown> = {}): Record<string, unknown> {
  const base: Record<string, unknown> = {
    hostname: 'node.tern.test',
    data_dir: dataDir,
    log: { level: 'silent' },
    listeners: { submission: { host: '127.0.0.1', port: 0 }, control: { host: '127.0.0.1', port: 0 }, inbound: { host: '127.0.0.1', port: 0 } },
    smtp_users: [{ username: 'tenant1', password: 'secret-1', tenant: 'default' }],
    dkim: { workers: 1 },
  };
  return merge(base, overrides);
}

function merge(a: Record<string, unknown>, b: Record<string, unknown>): Record<string, unknown> {
  const out = { ...a };
  for (const [k, v] of Object.entries(b)) {
    const cur = out[k];
    out[k] = v && typeof v === 'object' && !Array.isArray(v) && cur && typeof cur === 'object' && !Array.isArray(cur) ? merge(cur as Record<string, unknown>, v as Record<string, unknown>) : v;
  }
  return out;
}

export async function startTestNode(overrides: Record<string, unknown> = {}, opts: { dataDir?: string; inlinePrepare?: boolean; clock?: () => number } = {}): Promise<TernNode> {
  const dataDir = opts.dataDir ?? tempDir();
  const config = buildConfig(testConfigDoc(dataDir, overrides));
  return TernNode.start(config, { logger: pino({ level: 'silent' }), inlinePrepare: opts.inlinePrepare ?? false, clock: opts.clock });
}

export interface ChildNode {
  proc: ChildProcess;
  submissionPort: number;
  controlPort: number;
  output: () => string;
  exited: Promise<number | null>;
}

/** Runs `tern start` in a child process (the way an operator does) and waits until it listens. */
export async function spawnNode(configFile: string, ports: { submission: number; control: number }, timeoutMs = 30_000): Promise<ChildNode> {
  const proc = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'src/cli.ts'), 'start', '--config', configFile], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  proc.stdout!.on('data', (d) => (out += d));
  proc.stderr!.on('data', (d) => (out += d));
  const exited = new Promise<number | null>((resolve) => proc.on('exit', (code) => resolve(code)));
  const started = Date.now();
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`node exited with ${proc.exitCode} before listening:\n${out}`);
    if (/Tern is running/.test(out)) break;
    if (Date.now() - started > timeoutMs) {
      proc.kill('SIGKILL');
      throw new Error(`node did not start within ${timeoutMs} ms:\n${out}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return { proc, submissionPort: ports.submission, controlPort: ports.control, output: () => out, exited };
}

/** Writes a shaping file (the shipped providers, with `doc`'s blocks on top) and returns its path. */
export function shapingFile(doc: { default?: object; providers?: object[]; domains?: Record<string, object> }): string {
  const shipped = YAML.parse(fs.readFileSync(path.join(ROOT, 'config/shaping.yaml'), 'utf8'));
  const file = path.join(tempDir('tern-shaping-'), 'shaping.yaml');
  const merged = { default: { ...shipped.default, ...doc.default }, providers: [...(doc.providers ?? []), ...shipped.providers], domains: doc.domains ?? {} };
  fs.writeFileSync(file, YAML.stringify(merged));
  return file;
}

export function writeYaml(file: string, doc: unknown): string {
  fs.writeFileSync(file, YAML.stringify(doc));
  return file;
}

/** The node's events (all of the outbox) that match. */
export function eventsWhere(store: Store, pred: (e: TernEvent) => boolean): TernEvent[] {
  return store.events(0, 100_000).filter(pred);
}

/** Waits until at least `count` events match, and returns them. */
export async function waitForEvents(store: Store, pred: (e: TernEvent) => boolean, count = 1, timeoutMs = 15_000): Promise<TernEvent[]> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const found = eventsWhere(store, pred);
    if (found.length >= count) return found;
    if (Date.now() > until) throw new Error(`expected ${count} matching events, found ${found.length}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}
