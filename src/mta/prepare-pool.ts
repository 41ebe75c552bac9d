/**
 * Runs message preparation (checks, header completion, DKIM signing) on worker threads so that RSA signing
 * uses every core while the main thread keeps serving sockets.
 */
import fs from 'node:fs';
import os from 'node:os';
import { Piscina } from 'piscina';
import { loadSigningKey } from './dkim.js';
import { keyLookup, prepareMessage, type PrepareInput, type Prepared, type Refusal } from './prepare.js';

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
}

/** `threads` 0 = one per core; negative = prepare on the calling thread (tests, tiny deployments). */
export function createPreparer(keys: KeyMaterial[], threads: number): Preparer {
  if (threads < 0) {
    const lookup = keyLookup(keys.map((k) => loadSigningKey(k.domain, k.selector, k.pem)));
    return { prepare: async (input) => prepareMessage(input, lookup), close: async () => {} };
  }
  const count = threads || os.availableParallelism();
  const workerUrl = new URL(`./prepare-worker${import.meta.url.endsWith('.ts') ? '.ts' : '.js'}`, import.meta.url);
  const pool = new Piscina({
    filename: workerUrl.href,
    minThreads: count,
    maxThreads: count,
    idleTimeout: Infinity,
    workerData: { keys },
    // TypeScript sources need the tsx loader in the worker too
    execArgv: workerUrl.pathname.endsWith('.ts') ? [...process.execArgv.filter((a) => !a.startsWith('--input-type')), '--import', 'tsx'] : process.execArgv,
  });
  return {
    prepare: (input) => pool.run(input) as Promise<Prepared | Refusal>,
    close: () => pool.destroy(),
  };
}
