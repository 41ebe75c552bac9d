import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { afterEach, describe, expect, it } from 'vitest';
import { threadEntry } from '../../src/core/thread-entry.js';
import { tempDir } from '../support/node.js';

const saved = process.env.TMPDIR;
afterEach(() => {
  if (saved === undefined) delete process.env.TMPDIR;
  else process.env.TMPDIR = saved;
});

const fallback = new URL('./boot.mjs', import.meta.url);

describe('thread entry', () => {
  it('bundles a TypeScript thread module into one plain module, only we can write, that a thread runs', async () => {
    process.env.TMPDIR = tempDir();
    const url = threadEntry(new URL('../../src/bounce/parse-worker.ts', import.meta.url), fallback);
    expect(url.href).toMatch(/\/tern-threads-[^/]+\/parse-worker-[0-9a-f]{16}\.mjs$/);
    const file = new URL(url).pathname;
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    expect(fs.statSync(path.dirname(file)).mode & 0o777).toBe(0o700);
    // the bundle is the real thread: it answers a parse
    const worker = new Worker(url, { workerData: { options: { maxBytes: 1_000_000, maxDepth: 12 } } });
    const messages: unknown[] = [];
    const answered = new Promise<void>((resolve) =>
      worker.on('message', (m: { ready?: boolean; id?: number }) => {
        messages.push(m);
        if (m.ready) worker.postMessage({ id: 1, raw: Buffer.from('From: a@b.example\r\nSubject: x\r\n\r\nhello\r\n') });
        if (m.id === 1) resolve();
      }),
    );
    await answered;
    await worker.terminate();
    expect(messages.at(-1)).toMatchObject({ id: 1, report: expect.any(Object) });
    // the same code, the same file; a file taken away since is written again
    expect(threadEntry(new URL('../../src/bounce/parse-worker.ts', import.meta.url), fallback).href).toBe(url.href);
    fs.rmSync(file);
    expect(threadEntry(new URL('../../src/bounce/parse-worker.ts', import.meta.url), fallback).href).toBe(url.href);
    expect(fs.existsSync(file)).toBe(true);
  });

  it('starts the slow, safe way when the directory could hold someone else\'s code, and takes built JavaScript as it is', () => {
    process.env.TMPDIR = tempDir();
    const dir = path.join(os.tmpdir(), `tern-threads-${process.getuid?.() ?? 'user'}`);
    fs.mkdirSync(dir, { mode: 0o777 });
    fs.chmodSync(dir, 0o777);
    expect(threadEntry(new URL('../../src/mta/prepare-worker.ts', import.meta.url), fallback)).toBe(fallback);
    const js = new URL('file:///opt/tern/dist/mta/prepare-worker.js');
    expect(threadEntry(js, fallback)).toBe(js);
  });
});
