/** Worker thread body for message preparation: keys are loaded once per thread. */
import { parentPort, workerData } from 'node:worker_threads';
import { prepareMessage, type PrepareInput } from './prepare.js';
import { SigningKeys, type KeyMaterial, type TenantKeyMaterial } from './signing-keys.js';
import { TrackingTokens } from '../tracking/tokens.js';

const data = workerData as { keys: KeyMaterial[]; tenantKeys: TenantKeyMaterial[]; trackingKeys: string[] };
const keys = new SigningKeys(data.keys, data.tenantKeys);
const tokens = data.trackingKeys.length ? new TrackingTokens(data.trackingKeys.map((k) => Buffer.from(k, 'hex'))) : null;

parentPort!.on('message', ({ id, input, tenantKeys }: { id: number; input: PrepareInput; tenantKeys?: TenantKeyMaterial[] }) => {
  if (tenantKeys) return keys.setTenantKeys(tenantKeys);
  let result;
  try {
    result = prepareMessage(input, keys.for(input.tenant), tokens);
  } catch (err) {
    parentPort!.postMessage({ id, error: (err as Error).message });
    return;
  }
  // hand the bytes back without copying
  const owned = (b: Uint8Array) => b.byteLength === b.buffer.byteLength;
  const transfer = result.ok ? (result.personal ?? [result.message]).filter(owned).map((b) => b.buffer as ArrayBuffer) : [];
  parentPort!.postMessage({ id, result }, transfer);
});
