/** pino JSON logs. Every event also becomes one log line with an `event` field. */
import { pino, type Logger } from 'pino';

export type { Logger };

export function createLogger(opts: { level: string; file?: string }): Logger {
  const destination = pino.destination({ dest: opts.file ?? 1, sync: false, mkdir: true });
  return pino({ level: opts.level, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime }, destination);
}
