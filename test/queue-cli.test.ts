/** `tern queue …` against a running node (its own process), as an operator uses it. */
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import nodemailer from 'nodemailer';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { startSink, type Sink } from '../bench/sink.js';
import { freePort, ROOT, spawnNode, tempDir, testConfigDoc, writeYaml, type ChildNode } from './support/node.js';

const run = promisify(execFile);
const token = 'queue-cli-test-operator-token-0123';
let sink: Sink;
let child: ChildNode;
let config: string;

const tern = (...args: string[]) =>
  run(process.execPath, [path.join(ROOT, 'bin/tern.js'), 'queue', ...args, '--config', config], { cwd: ROOT, env: { ...process.env, TERN_ADMIN_TOKEN: '' } }).then(
    (r) => ({ code: 0, ...r }),
    (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
  );

beforeAll(async () => {
  sink = await startSink();
  const dir = tempDir();
  const ports = { submission: await freePort(), control: await freePort() };
  config = writeYaml(
    path.join(dir, 'tern.yaml'),
    testConfigDoc(path.join(dir, 'data'), {
      listeners: { submission: { port: ports.submission }, control: { port: ports.control } },
      control: { admin_token: token },
      routes: [{ domain: '*.tern.test', host: '127.0.0.1', port: sink.port }],
    }),
  );
  child = await spawnNode(config, ports);
});

afterAll(async () => {
  child?.proc.kill('SIGTERM');
  await child?.exited;
  await sink?.close();
});

it('suspends, lists (table and JSON), shows, and resumes over the control listener', async () => {
  const suspended = await tern('suspend', '--domain', 'cli.tern.test', '--reason', 'checking a complaint', '--duration', '1h');
  expect(suspended.code, suspended.stderr).toBe(0);
  const hold = /^Suspended domain=cli\.tern\.test \(hold ([0-9a-f]+)\) until \d{4}-\d\d-\d\dT[\d:]+Z: checking a complaint$/m.exec(suspended.stdout)?.[1];
  expect(hold, suspended.stdout).toBeDefined();

  const info = await nodemailer
    .createTransport({ host: '127.0.0.1', port: child.submissionPort, auth: { user: 'tenant1', pass: 'secret-1' }, ignoreTLS: true })
    .sendMail({ from: 'a@sender.tern.test', to: 'someone@cli.tern.test', text: 'x', messageId: '<cli-1@x>' });
  const qid = /queued as (\S+)/.exec(info.response)![1]!;

  const json = await tern('list', '--json', '--domain', 'cli.tern.test');
  expect(json.code, json.stderr).toBe(0);
  const list = JSON.parse(json.stdout);
  expect(list.scheduled).toEqual([expect.objectContaining({ queue: 'default:-@cli.tern.test', recipients: 1, held: [expect.objectContaining({ id: hold })] })]);
  expect(list.totals.queued_recipients).toBe(1);

  const table = await tern('list');
  expect(table.stdout).toMatch(/^SCHEDULED QUEUE\s+RCPTS\s+MSGS\s+OLDEST\s+NEXT\s+STATE$/m);
  expect(table.stdout).toMatch(new RegExp(`^default:-@cli\\.tern\\.test\\s+1\\s+1\\s+\\d+s\\s+now\\s+held ${hold} until \\S+: checking a complaint$`, 'm'));
  expect(table.stdout).toMatch(/^1 recipient\(s\) queued/m);

  const shown = await tern('show', qid);
  expect(shown.stdout).toMatch(/^message-id\s+<cli-1@x>$/m);
  expect(shown.stdout).toMatch(new RegExp(`^someone@cli\\.tern\\.test\\s+queued \\(held ${hold}\\)\\s+0\\s+now`, 'm'));
  expect((await tern('suspensions')).stdout).toMatch(new RegExp(`^${hold}\\s+domain=cli\\.tern\\.test\\s`, 'm'));
  await new Promise((r) => setTimeout(r, 300));
  expect(sink.idCounts.has('<cli-1@x>')).toBe(false);

  const resumed = await tern('resume', hold!);
  expect(resumed.code, resumed.stderr).toBe(0);
  expect(resumed.stdout).toBe(`Resumed domain=cli.tern.test (hold ${hold})\n`);
  await sink.waitFor(() => sink.idCounts.get('<cli-1@x>') === 1, 10_000);
  const after = JSON.parse((await tern('list', '--json')).stdout);
  expect(after.totals.queued_recipients).toBe(0);
});

it('says what is wrong: a refusal from the node exits 1 with its sentence, a usage mistake exits 2', async () => {
  const noSelector = await tern('suspend', '--reason', 'x');
  expect(noSelector.code).toBe(1);
  expect(noSelector.stderr).toMatch(/at least one of tenant, campaign, domain or source.*\(400\)/);
  const noReason = await tern('fail', '--domain', 'cli.tern.test');
  expect(noReason.code).toBe(2);
  expect(noReason.stderr).toMatch(/--reason is required/);
  const unknown = await tern('resume', 'nosuchhold');
  expect(unknown.code).toBe(1);
  expect(unknown.stderr).toMatch(/No hold in force has id nosuchhold \(404\)/);
});
