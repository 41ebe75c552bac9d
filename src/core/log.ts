/** pino JSON logs. Every event also becomes one log line with an `event` field. */
import { pino, type Logger } from 'pino';

export type { Logger };

/** Lines are gathered up to this many bytes per write (a busy node logs thousands a second)… */
const WRITE_AT_BYTES = 4096;
/** …and written at least this often, so that a quiet node's lines still show up at once to a reader. */
const FLUSH_EVERY_MS = 200;

export function createLogger(opts: { level: string; file?: string }): Logger {
  // pino writes what is gathered when the process exits; a kill -9 loses at most the last 200 ms of lines
  // (the events themselves are in the spool's outbox, written with the state they describe)
  const destination = pino.destination({
    dest: opts.file ?? 1,
    sync: false,
    mkdir: true,
    minLength: WRITE_AT_BYTES,
    periodicFlush: FLUSH_EVERY_MS,
  });
  return pino({ level: opts.level, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime }, destination);
}
