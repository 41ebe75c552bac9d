/** Worker thread body for message preparation: keys are loaded once per thread. */
import { parentPort, workerData } from 'node:worker_threads';
import { loadSigningKey } from './dkim.js';
import { keyLookup, prepareMessage, type PrepareInput } from './prepare.js';
import type { KeyMaterial } from './prepare-pool.js';

const keys = keyLookup((workerData as { keys: KeyMaterial[] }).keys.map((k) => loadSigningKey(k.domain, k.selector, k.pem)));

parentPort!.on('message', ({ id, input }: { id: number; input: PrepareInput }) => {
  let result;
  try {
    result = prepareMessage(input, keys);
  } catch (err) {
    parentPort!.postMessage({ id, error: (err as Error).message });
    return;
  }
  const message = result.ok ? result.message : null;
  // hand the bytes back without copying
  parentPort!.postMessage({ id, result }, message && message.byteLength === message.buffer.byteLength ? [message.buffer as ArrayBuffer] : []);
});
