/** Worker thread body for message preparation: keys are loaded once per thread. */
import { parentPort, workerData } from 'node:worker_threads';
import { loadSigningKey } from './dkim.js';
import { keyLookup, prepareMessage, type PrepareInput } from './prepare.js';
import type { KeyMaterial } from './prepare-pool.js';
import { TrackingTokens } from '../tracking/tokens.js';

const data = workerData as { keys: KeyMaterial[]; trackingKeys: string[] };
const keys = keyLookup(data.keys.map((k) => loadSigningKey(k.domain, k.selector, k.pem)));
const tokens = data.trackingKeys.length ? new TrackingTokens(data.trackingKeys.map((k) => Buffer.from(k, 'hex'))) : null;

parentPort!.on('message', ({ id, input }: { id: number; input: PrepareInput }) => {
  let result;
  try {
    result = prepareMessage(input, keys, tokens);
  } catch (err) {
    parentPort!.postMessage({ id, error: (err as Error).message });
    return;
  }
  // hand the bytes back without copying
  const owned = (b: Uint8Array) => b.byteLength === b.buffer.byteLength;
  const transfer = result.ok ? (result.personal ?? [result.message]).filter(owned).map((b) => b.buffer as ArrayBuffer) : [];
  parentPort!.postMessage({ id, result }, transfer);
});
