/** Rates written like "100/min", and the GCRA limiter that enforces them. */

export interface Rate {
  count: number;
  periodMs: number;
  /** as written, for explanations */
  text: string;
}

const PERIODS: Record<string, number> = {
  s: 1000, sec: 1000, second: 1000,
  m: 60_000, min: 60_000, minute: 60_000,
  h: 3_600_000, hr: 3_600_000, hour: 3_600_000,
  d: 86_400_000, day: 86_400_000,
};

export const RATE_PATTERN = '^\\s*\\d+\\s*/\\s*\\d*\\s*(s|sec|second|m|min|minute|h|hr|hour|d|day)\\s*$';

/** Parses "100/min", "20000/day", "5/s", and "3/10min" (three per ten minutes). */
export function parseRate(text: string): Rate {
  const m = /^\s*(\d+)\s*\/\s*(\d*)\s*([a-z]+)\s*$/.exec(text);
  const unit = m ? PERIODS[m[3]!] : undefined;
  const multiple = m && m[2] ? Number(m[2]) : 1;
  if (!m || unit === undefined || Number(m[1]) <= 0 || multiple <= 0)
    throw new Error(`"${text}" is not a rate; write it like "100/min", "20000/day" or "3/10min"`);
  return { count: Number(m[1]), periodMs: unit * multiple, text: text.trim() };
}

/**
 * Generic cell rate algorithm: each key has a theoretical arrival time; a request is due once that time
 * has come. Sends are spaced evenly (no bursts), so "60/min" is one a second.
 */
export class Gcra {
  private readonly tat = new Map<string, number>();

  /** Reserves the next slot for `key` and returns how long to wait for it (0 = now). */
  reserve(key: string, rate: Rate, now = Date.now()): number {
    const interval = rate.periodMs / rate.count;
    const at = Math.max(this.tat.get(key) ?? now, now);
    this.tat.set(key, at + interval);
    return at - now;
  }

  /** Forgets keys whose next slot has passed (their next request is due at once anyway). */
  sweep(now = Date.now()): void {
    for (const [k, t] of this.tat) if (t < now) this.tat.delete(k);
  }
}
