/** Worker thread body for report parsing: one message at a time, results posted back with the job id. */
import { parentPort, workerData } from 'node:worker_threads';
import { parseReport, unknownReport, type ParseOptions } from './parse.js';

const options = (workerData as { options: ParseOptions }).options;

parentPort!.on('message', ({ id, raw }: { id: number; raw: Uint8Array }) => {
  let report;
  try {
    report = parseReport(raw, options);
  } catch (err) {
    // parseReport is written not to throw; if it ever does, the message is unknown, not the thread dead
    report = unknownReport(`parser error: ${(err as Error).message}`);
  }
  parentPort!.postMessage({ id, report });
});
parentPort!.postMessage({ ready: true });
