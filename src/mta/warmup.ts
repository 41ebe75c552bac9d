/**
 * Automatic IP warmup. A source on a `WarmupPlan` may take only its plan day's cap of recipients per UTC
 * day (in total and, where the plan says so, per mailbox provider). The plan day advances only after a day
 * on which the source sent, and a source idle for `idle_reset` starts again at day 1. Counters are kept in
 * LMDB, so a restart mid-day keeps the day's count.
 *
 * The scheduler asks `fits()` before binding mail to a source, `reserve()`s the room while the mail waits
 * in the source's ready queue, and `record()`s it once it is handed to the remote server.
 */
import fs from 'node:fs';
import { Type, type Static } from '@sinclair/typebox';
import YAML from 'yaml';
import { Gauge, type Registry } from 'prom-client';
import type { Database } from 'lmdb';
import { ConfigError, schemaProblems } from '../core/config.js';
import type { Store } from '../core/store.js';

const DAY_MS = 86_400_000;

const curveProps = {
  start: Type.Integer({ minimum: 1, description: 'cap on day 1' }),
  factor: Type.Number({ exclusiveMinimum: 1, maximum: 10, description: 'growth per sending day' }),
  full: Type.Integer({ minimum: 1, description: 'the cap at which the source counts as warm (uncapped)' }),
};
const tableProps = { days: Type.Array(Type.Integer({ minimum: 0 }), { minItems: 1, description: 'cap of day 1, 2, …; warm after the last' }) };
const Curve = Type.Union([Type.Object(curveProps, { additionalProperties: false }), Type.Object(tableProps, { additionalProperties: false })]);
const providers = { providers: Type.Optional(Type.Record(Type.String({ minLength: 1 }), Curve)) };
const PlanDoc = Type.Union([
  Type.Object({ ...curveProps, ...providers }, { additionalProperties: false }),
  Type.Object({ ...tableProps, ...providers }, { additionalProperties: false }),
]);
const PlansFile = Type.Object({ plans: Type.Record(Type.String({ minLength: 1 }), Type.Unknown()) }, { additionalProperties: false });
type CurveDoc = Static<typeof Curve>;

/** A cap per plan day; Infinity once the curve has reached full volume. */
function capOf(curve: CurveDoc, day: number): number {
  if (day < 1) return 0;
  if ('days' in curve) return day <= curve.days.length ? curve.days[day - 1]! : Infinity;
  const cap = Math.round(curve.start * curve.factor ** (day - 1));
  return cap >= curve.full ? Infinity : cap;
}

export class WarmupPlan {
  constructor(
    readonly name: string,
    private readonly total: CurveDoc,
    private readonly providers: Record<string, CurveDoc> = {},
  ) {}

  /** The day's cap for the source in total (`provider` null) or towards one provider (Infinity: none). */
  cap(day: number, provider: string | null = null): number {
    const total = capOf(this.total, day);
    const own = provider && this.providers[provider] ? capOf(this.providers[provider], day) : Infinity;
    return Math.min(total, own);
  }

  /** Providers that have their own curve. */
  get providerNames(): string[] {
    return Object.keys(this.providers);
  }

  /** True once no cap applies any more. */
  warm(day: number): boolean {
    return this.cap(day) === Infinity && this.providerNames.every((p) => this.cap(day, p) === Infinity);
  }
}

/** Reads named plans from a YAML file (`plans: {name: …}`); problems are named by key path. */
export function loadWarmupPlans(file: string, extra: Record<string, unknown> = {}): Map<string, WarmupPlan> {
  let doc: unknown;
  try {
    doc = YAML.parse(fs.readFileSync(file, 'utf8')) ?? { plans: {} };
  } catch (err) {
    throw new ConfigError([`warmup: cannot read ${file}: ${(err as Error).message}`]);
  }
  const problems = schemaProblems(PlansFile, doc).map((p) => `warmup file ${file}: ${p}`);
  if (problems.length) throw new ConfigError(problems);
  return parsePlans({ ...(doc as Static<typeof PlansFile>).plans, ...extra }, (name) => (name in extra ? `warmup.plans.${name}` : `warmup file ${file}: plans.${name}`));
}

export function parsePlans(plans: Record<string, unknown>, where: (name: string) => string = (n) => `plans.${n}`): Map<string, WarmupPlan> {
  const out = new Map<string, WarmupPlan>();
  const problems: string[] = [];
  for (const [name, doc] of Object.entries(plans)) {
    const found = schemaProblems(PlanDoc, doc);
    if (found.length) {
      // a union's errors are noise; say what a plan looks like
      problems.push(`${where(name)}: write a plan as {start: 50, factor: 1.4, full: 500000} or {days: [50, 100, …]}, with optional providers: {google: <same shape>} (${found[0]})`);
      continue;
    }
    const { providers, ...total } = doc as Static<typeof PlanDoc>;
    out.set(name, new WarmupPlan(name, total as CurveDoc, providers ?? {}));
  }
  if (problems.length) throw new ConfigError(problems);
  return out;
}

/** What is kept per source across restarts. */
interface SourceState {
  plan: string;
  start: string;
  /** plan day; 0 = the start date has not come yet */
  day: number;
  /** the UTC day the counters below are for */
  date: string;
  sent: number;
  byProvider: Record<string, number>;
  lastSent: string | null;
}

export interface WarmupSource {
  name: string;
  pool: string;
  plan: string;
  /** YYYY-MM-DD (UTC); day 1 is this day or the first day after it that the node runs */
  start: string;
}

export interface WarmupStatus {
  source: string;
  pool: string;
  plan: string;
  start: string;
  state: 'not_started' | 'warming' | 'warm';
  day: number;
  date: string;
  /** null when uncapped */
  cap: number | null;
  sent_today: number;
  reserved: number;
  last_sent: string | null;
  providers: Record<string, { cap: number | null; sent_today: number; reserved: number }>;
}

export interface WarmupChange {
  source: string;
  kind: 'advanced' | 'held' | 'reset' | 'started';
  day: number;
}

const dateOf = (ms: number) => new Date(ms).toISOString().slice(0, 10);
const daysBetween = (a: string, b: string) => Math.round((Date.parse(b) - Date.parse(a)) / DAY_MS);

export class Warmup {
  private readonly states = new Map<string, SourceState>();
  private readonly sources = new Map<string, WarmupSource>();
  private readonly reserved = new Map<string, { total: number; byProvider: Map<string, number> }>();
  private readonly db: Database<SourceState, string>;
  private today: string;
  /** clock time at which the current UTC day ends */
  private rollsAt: number;
  private readonly listeners: Array<(changes: WarmupChange[]) => void> = [];

  constructor(
    private readonly store: Store,
    private readonly plans: Map<string, WarmupPlan>,
    sources: WarmupSource[],
    private readonly idleResetDays = 30,
    /** the warmup calendar's clock; tests move it to simulate days */
    readonly clock: () => number = Date.now,
  ) {
    this.db = store.db('warmup');
    this.today = dateOf(clock());
    this.rollsAt = Date.parse(this.today) + DAY_MS;
    this.setSources(sources);
  }

  /** The names of the plans sources may follow. */
  planNames(): string[] {
    return [...this.plans.keys()];
  }

  /**
   * The sources on a plan, at start and whenever pools change at run time: a new source (or one given a new
   * plan or start) warms up from day 1, one that stays keeps its counters, one that is gone is forgotten
   * here (its state stays in LMDB, should it come back with the same plan).
   */
  setSources(sources: WarmupSource[]): void {
    for (const s of sources) if (!this.plans.has(s.plan)) throw new ConfigError([`source ${s.name}: warmup plan "${s.plan}" is not defined`]);
    const wanted = new Set(sources.map((s) => s.name));
    for (const name of [...this.states.keys()]) {
      if (wanted.has(name)) continue;
      this.states.delete(name);
      this.sources.delete(name);
      this.reserved.delete(name);
    }
    for (const s of sources) {
      this.sources.set(s.name, s);
      let state = this.states.get(s.name) ?? this.db.get(s.name);
      if (!state || state.plan !== s.plan || state.start !== s.start) {
        // a new source, or the operator gave it a new plan or start: it warms up from day 1
        state = { plan: s.plan, start: s.start, day: this.today >= s.start ? 1 : 0, date: this.today, sent: 0, byProvider: {}, lastSent: null };
        this.db.put(s.name, state);
      }
      this.states.set(s.name, state);
    }
    this.roll();
  }

  /** Called with what changed whenever a new day begins. */
  onRoll(listener: (changes: WarmupChange[]) => void): void {
    this.listeners.push(listener);
  }

  /** Whether any source follows a plan (else binding mail skips the warmup checks altogether). */
  get active(): boolean {
    return this.states.size > 0;
  }

    has(source: string): boolean {
    return this.states.has(source);
  }

  /** Starts a new day when the clock has passed midnight (UTC). Returns what changed. */
  roll(): WarmupChange[] {
    const now = this.clock();
    if (now < this.rollsAt && [...this.states.values()].every((s) => s.date === this.today)) return [];
    this.today = dateOf(now);
    this.rollsAt = Date.parse(this.today) + DAY_MS;
    const changes: WarmupChange[] = [];
    for (const [name, s] of this.states) {
      if (s.date >= this.today) continue; // also when the clock went back: keep the counters
      const sentThatDay = s.sent > 0;
      const plan = this.plans.get(s.plan)!;
      if (s.day === 0) {
        if (this.today >= s.start) {
          s.day = 1;
          changes.push({ source: name, kind: 'started', day: 1 });
        }
      } else if (s.lastSent && !sentThatDay && s.day > 1 && daysBetween(s.lastSent, this.today) > this.idleResetDays) {
        s.day = 1;
        changes.push({ source: name, kind: 'reset', day: 1 });
      } else if (sentThatDay) {
        if (!plan.warm(s.day)) {
          s.day++;
          changes.push({ source: name, kind: 'advanced', day: s.day });
        }
      } else if (!plan.warm(s.day)) changes.push({ source: name, kind: 'held', day: s.day });
      s.date = this.today;
      s.sent = 0;
      s.byProvider = {};
    }
    if (changes.length || [...this.states.values()].length) {
      void this.store.transact((tx) => {
        for (const [name, s] of this.states) this.db.put(name, s);
        for (const c of changes) tx.event(`warmup_${c.kind}`, { source: c.source, day: c.day, cap: this.capText(c.source) });
      });
    }
    if (changes.length) for (const l of this.listeners) l(changes);
    return changes;
  }

  private capText(source: string): number | null {
    const s = this.states.get(source)!;
    const cap = this.plans.get(s.plan)!.cap(s.day);
    return cap === Infinity ? null : cap;
  }

  /** Whether `source` can take these recipients today (sources without a plan always can). */
  fits(source: string, needs: Array<{ provider: string | null; n: number }>): boolean {
    const s = this.states.get(source);
    if (!s) return true;
    if (this.clock() >= this.rollsAt) this.roll();
    const plan = this.plans.get(s.plan)!;
    if (s.day === 0) return false;
    if (plan.warm(s.day)) return true;
    const r = this.reserved.get(source);
    const cap = plan.cap(s.day);
    const used = s.sent + (r?.total ?? 0);
    const total = needs.reduce((a, x) => a + x.n, 0);
    const perProvider = new Map<string, number>();
    for (const { provider, n } of needs) if (provider) perProvider.set(provider, (perProvider.get(provider) ?? 0) + n);
    // one message with more recipients on a domain than a whole day's cap would never fit: it may take a
    // fresh day of its own (if the day has any room), else a source warming up alone would wait forever
    const single = needs.length === 1 && used === 0 && cap > 0;
    if (used + total > cap && !single) return false;
    for (const [p, n] of perProvider) {
      const pcap = plan.cap(s.day, p);
      const pused = (s.byProvider[p] ?? 0) + (r?.byProvider.get(p) ?? 0);
      if (pcap !== Infinity && pused + n > pcap && !(single && pused === 0 && pcap > 0)) return false;
    }
    return true;
  }

  /** Holds room for recipients bound to the source but not sent yet. */
  reserve(source: string, provider: string | null, n: number): void {
    if (!this.states.has(source)) return;
    let r = this.reserved.get(source);
    if (!r) this.reserved.set(source, (r = { total: 0, byProvider: new Map() }));
    r.total += n;
    if (provider) r.byProvider.set(provider, (r.byProvider.get(provider) ?? 0) + n);
  }

  /** Gives back room held by `reserve` (the mail went elsewhere or was not sent). */
  unreserve(source: string, provider: string | null, n: number): void {
    const r = this.reserved.get(source);
    if (!r) return;
    r.total = Math.max(0, r.total - n);
    if (provider) r.byProvider.set(provider, Math.max(0, (r.byProvider.get(provider) ?? 0) - n));
  }

  /** Counts recipients handed to a remote server from `source` (their reservation becomes today's count). */
  record(source: string, provider: string | null, n: number): void {
    const s = this.states.get(source);
    if (!s) return;
    this.unreserve(source, provider, n);
    if (this.clock() >= this.rollsAt) this.roll();
    s.sent += n;
    if (provider) s.byProvider[provider] = (s.byProvider[provider] ?? 0) + n;
    s.lastSent = this.today;
    // committed within milliseconds, in the same batch as other writes; a kill -9 loses at most those
    this.db.put(source, s);
  }

  /** Real time (Date.now() terms) at which the current warmup day ends: where waiting mail is scheduled. */
  nextDayAt(): number {
    return this.rollsAt - (this.clock() - Date.now());
  }

  status(source?: string): WarmupStatus[] {
    if (this.clock() >= this.rollsAt) this.roll();
    const out: WarmupStatus[] = [];
    for (const [name, s] of this.states) {
      if (source && name !== source) continue;
      const plan = this.plans.get(s.plan)!;
      const info = this.sources.get(name)!;
      const r = this.reserved.get(name);
      const capOrNull = (c: number) => (c === Infinity ? null : c);
      const providers: WarmupStatus['providers'] = {};
      for (const p of new Set([...plan.providerNames, ...Object.keys(s.byProvider)]))
        providers[p] = { cap: s.day === 0 ? 0 : capOrNull(plan.cap(s.day, p)), sent_today: s.byProvider[p] ?? 0, reserved: r?.byProvider.get(p) ?? 0 };
      out.push({
        source: name,
        pool: info.pool,
        plan: s.plan,
        start: s.start,
        state: s.day === 0 ? 'not_started' : plan.warm(s.day) ? 'warm' : 'warming',
        day: s.day,
        date: s.date,
        cap: s.day === 0 ? 0 : capOrNull(plan.cap(s.day)),
        sent_today: s.sent,
        reserved: r?.total ?? 0,
        last_sent: s.lastSent,
        providers,
      });
    }
    return out;
  }

  /** Gauges for /metrics, read at scrape time. */
  registerMetrics(registry: Registry): void {
    const warmup = this;
    new Gauge({
      name: 'tern_warmup_day',
      help: 'plan day of each source on a warmup plan (0 = not started)',
      labelNames: ['source', 'plan', 'state'],
      registers: [registry],
      collect() {
        this.reset();
        for (const s of warmup.status()) this.set({ source: s.source, plan: s.plan, state: s.state }, s.day);
      },
    });
    new Gauge({
      name: 'tern_warmup_cap',
      help: "today's cap per source, in total (provider=\"\") and per provider; +Inf when warm",
      labelNames: ['source', 'provider'],
      registers: [registry],
      collect() {
        this.reset();
        for (const s of warmup.status()) {
          this.set({ source: s.source, provider: '' }, s.cap ?? Infinity);
          for (const [p, v] of Object.entries(s.providers)) this.set({ source: s.source, provider: p }, v.cap ?? Infinity);
        }
      },
    });
    new Gauge({
      name: 'tern_warmup_sent_today',
      help: 'recipients sent today per source, in total (provider="") and per provider',
      labelNames: ['source', 'provider'],
      registers: [registry],
      collect() {
        this.reset();
        for (const s of warmup.status()) {
          this.set({ source: s.source, provider: '' }, s.sent_today);
          for (const [p, v] of Object.entries(s.providers)) this.set({ source: s.source, provider: p }, v.sent_today);
        }
      },
    });
  }
}
