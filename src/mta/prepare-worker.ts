/** Worker thread body for message preparation: keys are loaded once per thread. */
import { parentPort, workerData } from 'node:worker_threads';
import { prepareMessage, type PrepareInput } from './prepare.js';
import { SigningKeys, type KeyMaterial, type TenantKeyMaterial } from './prepare-pool.js';

const data = workerData as { keys: KeyMaterial[]; tenantKeys: TenantKeyMaterial[] };
const keys = new SigningKeys(data.keys, data.tenantKeys);

parentPort!.on('message', ({ id, input, tenantKeys }: { id: number; input: PrepareInput; tenantKeys?: TenantKeyMaterial[] }) => {
  if (tenantKeys) return keys.setTenantKeys(tenantKeys);
  let result;
  try {
    result = prepareMessage(input, keys.for(input.tenant));
  } catch (err) {
    parentPort!.postMessage({ id, error: (err as Error).message });
    return;
  }
  const message = result.ok ? result.message : null;
  // hand the bytes back without copying
  parentPort!.postMessage({ id, result }, message && message.byteLength === message.buffer.byteLength ? [message.buffer as ArrayBuffer] : []);
});
