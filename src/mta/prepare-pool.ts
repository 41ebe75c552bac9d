/**
 * Runs message preparation (checks, header completion, DKIM signing) on worker threads so that RSA signing
 * uses every core while the main thread keeps serving sockets. Message bytes are transferred, not copied.
 */
import fs from 'node:fs';
import os from 'node:os';
import { Worker } from 'node:worker_threads';
import { loadSigningKey } from './dkim.js';
import { keyLookup, prepareMessage, type PrepareInput, type Prepared, type Refusal } from './prepare.js';
import { TrackingTokens } from '../tracking/tokens.js';

export interface KeyMaterial {
  domain: string;
  selector: string;
  pem: string;
}

export function readKeyMaterial(keys: Array<{ domain: string; selector: string; keyFile: string }>): KeyMaterial[] {
  return keys.map((k) => {
    const pem = fs.readFileSync(k.keyFile, 'utf8');
    loadSigningKey(k.domain, k.selector, pem); // fail at start, with the key's name, not in a worker later
    return { domain: k.domain, selector: k.selector, pem };
  });
}

export interface Preparer {
  prepare(input: PrepareInput): Promise<Prepared | Refusal>;
  close(): Promise<void>;
  /** the worker threads (none when preparing inline) */
  threads(): Worker[];
}

interface Pending {
  resolve: (r: Prepared | Refusal) => void;
  reject: (e: Error) => void;
}

class PreparerThread {
  worker!: Worker;
  readonly pending = new Map<number, Pending>();
  private closing = false;

  constructor(
    private readonly url: URL,
    private readonly keys: KeyMaterial[],
    private readonly trackingKeys: string[],
  ) {
    this.spawn();
  }

  /** Starts the thread; one that dies unexpectedly fails its pending messages (the clients get a 451) and is replaced. */
  private spawn(): void {
    const worker = new Worker(this.url, { workerData: { keys: this.keys, trackingKeys: this.trackingKeys } });
    worker.on('message', ({ id, result, error }: { id: number; result?: Prepared | Refusal; error?: string }) => {
      const p = this.pending.get(id);
      if (!p) return;
      this.pending.delete(id);
      if (error !== undefined) p.reject(new Error(`message preparation failed: ${error}`));
      else p.resolve(result!);
    });
    worker.on('error', (err) => this.failAll(err));
    worker.on('exit', (code) => {
      this.failAll(new Error(`preparation thread exited with code ${code}`));
      if (!this.closing) this.spawn();
    });
    this.worker = worker;
  }

  failAll(err: Error): void {
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }

  close(): Promise<number> {
    this.closing = true;
    return this.worker.terminate();
  }
}

/**
 * `threads` 0 = one per core; negative = prepare on the calling thread (tests, tiny deployments).
 * `trackingKeys` (signing key first) sign tracking tokens; without them no message is personalised.
 */
export function createPreparer(keys: KeyMaterial[], threads: number, trackingKeys: Buffer[] = []): Preparer {
  if (threads < 0) {
    const lookup = keyLookup(keys.map((k) => loadSigningKey(k.domain, k.selector, k.pem)));
    const tokens = trackingKeys.length ? new TrackingTokens(trackingKeys) : null;
    return { prepare: async (input) => prepareMessage(input, lookup, tokens), close: async () => {}, threads: () => [] };
  }
  const count = threads || os.availableParallelism();
  const url = new URL(import.meta.url.endsWith('.ts') ? './prepare-worker-boot.mjs' : './prepare-worker.js', import.meta.url);
  const trackingHex = trackingKeys.map((k) => k.toString('hex'));
  const pool = Array.from({ length: count }, () => new PreparerThread(url, keys, trackingHex));
  let nextId = 0;
  return {
    prepare(input) {
      // the least busy thread takes it
      let t = pool[0]!;
      for (const c of pool) if (c.pending.size < t.pending.size) t = c;
      const id = ++nextId;
      const raw = input.raw;
      const transferable = raw.byteOffset === 0 && raw.byteLength === raw.buffer.byteLength && !(raw.buffer instanceof SharedArrayBuffer);
      return new Promise((resolve, reject) => {
        t.pending.set(id, { resolve, reject });
        t.worker.postMessage({ id, input }, transferable ? [raw.buffer as ArrayBuffer] : []);
      });
    },
    async close() {
      await Promise.all(pool.map((t) => t.close()));
    },
    threads: () => pool.map((t) => t.worker),
  };
}
