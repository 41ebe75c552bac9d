/** Worker thread body for message preparation: keys are loaded once per thread. */
import { workerData } from 'node:worker_threads';
import { loadSigningKey } from './dkim.js';
import { keyLookup, prepareMessage, type PrepareInput, type Prepared, type Refusal } from './prepare.js';
import type { KeyMaterial } from './prepare-pool.js';

const keys = keyLookup((workerData as { keys: KeyMaterial[] }).keys.map((k) => loadSigningKey(k.domain, k.selector, k.pem)));

export default function prepare(input: PrepareInput): Prepared | Refusal {
  return prepareMessage(input, keys);
}
