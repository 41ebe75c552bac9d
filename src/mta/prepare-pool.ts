/**
 * Runs message preparation (checks, header completion, DKIM signing) on worker threads so that RSA signing
 * uses every core while the main thread keeps serving sockets. Message bytes are transferred, not copied.
 */
import fs from 'node:fs';
import os from 'node:os';
import { Worker } from 'node:worker_threads';
import { loadSigningKey } from './dkim.js';
import { prepareMessage, type PrepareInput, type Prepared, type Refusal } from './prepare.js';
import { SigningKeys, type KeyMaterial, type TenantKeyMaterial } from './signing-keys.js';
import { TrackingTokens } from '../tracking/tokens.js';
import { threadEntry } from '../core/thread-entry.js';

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
  /** Replaces the keys of tenants' sending domains in every thread (and in threads started later). */
  setTenantKeys(keys: TenantKeyMaterial[]): void;
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
    /** where a thread starts (see src/core/thread-entry.ts), asked at every start */
    private readonly entry: () => URL,
    private readonly keys: KeyMaterial[],
    private readonly tenantKeys: () => TenantKeyMaterial[],
    private readonly trackingKeys: string[],
  ) {
    this.spawn();
  }

  /** Starts the thread; one that dies unexpectedly fails its pending messages (the clients get a 451) and is replaced. */
  private spawn(): void {
    const worker = new Worker(this.entry(), { workerData: { keys: this.keys, tenantKeys: this.tenantKeys(), trackingKeys: this.trackingKeys } });
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
    const signing = new SigningKeys(keys);
    const tokens = trackingKeys.length ? new TrackingTokens(trackingKeys) : null;
    return { prepare: async (input) => prepareMessage(input, signing.for(input.tenant), tokens), close: async () => {}, threads: () => [], setTenantKeys: (k) => signing.setTenantKeys(k) };
  }
  const count = threads || os.availableParallelism();
  const fromSources = import.meta.url.endsWith('.ts');
  const entry = () => threadEntry(new URL(fromSources ? './prepare-worker.ts' : './prepare-worker.js', import.meta.url), new URL('./prepare-worker-boot.mjs', import.meta.url));
  let tenantKeys: TenantKeyMaterial[] = [];
  const trackingHex = trackingKeys.map((k) => k.toString('hex'));
  const pool = Array.from({ length: count }, () => new PreparerThread(entry, keys, () => tenantKeys, trackingHex));
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
    setTenantKeys(k) {
      tenantKeys = k;
      // ordered with the messages: every preparation posted after this uses the new keys
      for (const t of pool) t.worker.postMessage({ tenantKeys: k });
    },
  };
}
