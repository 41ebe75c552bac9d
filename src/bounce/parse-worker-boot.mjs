// Entry of a report parsing thread when running from TypeScript sources: register tsx in this thread, then load
// the worker module (Node 20 threads do not take --import loaders from their parent).
import { register } from 'tsx/esm/api';

register();
await import('./parse-worker.ts');
