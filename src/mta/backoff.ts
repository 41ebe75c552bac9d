/**
 * Adaptive backoff: rules on remote replies (from the shaping file) that, once a reply pattern has been seen
 * often enough, suspend or throttle a source → site (or the whole site) for a while, or fail the matching
 * messages. Actions expire on their own and can be listed and cleared.
 */
import crypto from 'node:crypto';
import type { Rate } from './rate.js';

export interface BackoffRule {
  name: string;
  /** tested against the whole reply line, e.g. "421 4.7.0 Try again later" */
  reply: RegExp;
  /** null = the first matching reply triggers */
  threshold: Rate | null;
  action: 'suspend' | 'throttle' | 'fail';
  durationMs: number;
  /** throttle only */
  rate: Rate | null;
  /** source: this source → site; site: every source sending to the site */
  scope: 'source' | 'site';
}

export interface BackoffAction {
  id: string;
  rule: string;
  action: 'suspend' | 'throttle';
  scope: 'source' | 'site';
  source: string | null;
  site: string;
  since: number;
  until: number;
  rate: string | null;
  /** the reply that set it off */
  cause: string;
}

export class Backoff {
  private readonly hits = new Map<string, number[]>();
  private readonly actions = new Map<string, BackoffAction & { rateValue: Rate | null }>();

  constructor(private rules: BackoffRule[]) {}

  setRules(rules: BackoffRule[]): void {
    this.rules = rules;
  }

  /** A `fail` rule that matches this reply (it turns a deferral into a permanent failure), if any. */
  failRule(reply: string): BackoffRule | undefined {
    return this.rules.find((r) => r.action === 'fail' && r.threshold === null && r.reply.test(reply));
  }

  /**
   * Records a non-success reply from `site` seen by `source`; returns the action it starts, if a rule's
   * threshold is now reached and no such action is already running.
   */
  observe(reply: string, source: string, site: string, now = Date.now()): BackoffAction | null {
    for (const rule of this.rules) {
      if (rule.action === 'fail' || !rule.reply.test(reply)) continue;
      const scopeKey = rule.scope === 'source' ? `${source}->${site}` : site;
      if (rule.threshold) {
        const key = `${rule.name}|${scopeKey}`;
        const window = (this.hits.get(key) ?? []).filter((t) => t > now - rule.threshold!.periodMs);
        window.push(now);
        this.hits.set(key, window);
        if (window.length < rule.threshold.count) continue;
        this.hits.delete(key);
      }
      const existing = [...this.actions.values()].find((a) => a.rule === rule.name && a.site === site && a.source === (rule.scope === 'source' ? source : null) && a.until > now);
      if (existing) continue;
      const action = {
        id: crypto.randomBytes(6).toString('hex'),
        rule: rule.name,
        action: rule.action,
        scope: rule.scope,
        source: rule.scope === 'source' ? source : null,
        site,
        since: now,
        until: now + rule.durationMs,
        rate: rule.rate?.text ?? null,
        rateValue: rule.rate,
        cause: reply,
      };
      this.actions.set(action.id, action);
      return strip(action);
    }
    return null;
  }

  /** Running actions, soonest to end first; expired ones are dropped. */
  active(now = Date.now()): BackoffAction[] {
    for (const [id, a] of this.actions) if (a.until <= now) this.actions.delete(id);
    return [...this.actions.values()].sort((a, b) => a.until - b.until).map(strip);
  }

  /** Whether `source` may not send to `site` now, and until when. */
  suspendedUntil(source: string, site: string, now = Date.now()): number | null {
    let until: number | null = null;
    for (const a of this.actions.values())
      if (a.action === 'suspend' && a.site === site && (a.source === null || a.source === source) && a.until > now) until = Math.max(until ?? 0, a.until);
    return until;
  }

  /** The strictest throttle rate on `source` → `site` now, if any. */
  throttle(source: string, site: string, now = Date.now()): Rate | null {
    let slowest: Rate | null = null;
    for (const a of this.actions.values()) {
      if (a.action !== 'throttle' || !a.rateValue || a.site !== site || (a.source !== null && a.source !== source) || a.until <= now) continue;
      if (!slowest || a.rateValue.periodMs / a.rateValue.count > slowest.periodMs / slowest.count) slowest = a.rateValue;
    }
    return slowest;
  }

  clear(id: string): boolean {
    return this.actions.delete(id);
  }
}

function strip(a: BackoffAction & { rateValue: Rate | null }): BackoffAction {
  const { rateValue: _r, ...rest } = a;
  return rest;
}
