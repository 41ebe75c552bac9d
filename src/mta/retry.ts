/** When to try a deferred recipient again, and when to give up. Pure. */

export interface RetryPolicy {
  /** wait before retry n (1-based); the last value repeats */
  scheduleMs: number[];
  /** ± fraction of random spread, so that a burst deferred together does not return together */
  jitter: number;
  maxAgeMs: number;
}

export type RetryDecision = { expire: true } | { expire: false; at: number };

/**
 * `attempts` is how many attempts have been made (≥ 1). A recipient still undelivered when the message is
 * `maxAgeMs` old expires; the last retry is pulled in to land exactly on that deadline.
 */
export function nextAttempt(policy: RetryPolicy, attempts: number, createdAt: number, now: number, random = Math.random): RetryDecision {
  const deadline = createdAt + policy.maxAgeMs;
  if (now >= deadline) return { expire: true };
  const base = policy.scheduleMs[Math.min(attempts, policy.scheduleMs.length) - 1] ?? policy.scheduleMs[0]!;
  const spread = base * policy.jitter * (random() * 2 - 1);
  return { expire: false, at: Math.min(Math.round(now + base + spread), deadline) };
}
