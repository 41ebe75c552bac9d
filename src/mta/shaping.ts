/**
 * Traffic shaping as data (config/shaping.yaml): what a source → site may do. Settings merge in layers,
 * each later layer winning, and every effective value keeps the name of the layer it came from:
 *
 *   built-in defaults → default → provider (matched by MX host suffix) → domains.<domain>
 *
 * and inside each block, `sources.<name>` for that egress source only.
 */
import fs from 'node:fs';
import { Type, type Static, type TSchema } from '@sinclair/typebox';
import YAML from 'yaml';
import { ConfigError, schemaProblems } from '../core/config.js';
import { DURATION_PATTERN, parseDuration } from '../core/units.js';
import { parseRate, RATE_PATTERN, type Rate } from './rate.js';
import type { BackoffRule } from './backoff.js';

export interface ShapingSettings {
  connections: number;
  messages_per_connection: number;
  recipients_per_transaction: number;
  /** messages per period from one source to one site; null = as fast as connections allow */
  rate: Rate | null;
  /** new connections per period from one source to one site */
  connection_rate: Rate | null;
  tls: 'opportunistic' | 'required';
  connect_timeout: number;
  idle_timeout: number;
}

export type SettingName = keyof ShapingSettings;

const RateText = Type.Union([Type.String({ pattern: RATE_PATTERN }), Type.Null()]);
const settingProps = {
  connections: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })),
  messages_per_connection: Type.Optional(Type.Integer({ minimum: 1 })),
  recipients_per_transaction: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })),
  rate: Type.Optional(RateText),
  connection_rate: Type.Optional(RateText),
  tls: Type.Optional(Type.Union([Type.Literal('opportunistic'), Type.Literal('required')])),
  connect_timeout: Type.Optional(Type.String({ pattern: DURATION_PATTERN })),
  idle_timeout: Type.Optional(Type.String({ pattern: DURATION_PATTERN })),
};
const strict = <T extends Record<string, TSchema>>(p: T) => Type.Object(p, { additionalProperties: false });
const Block = strict({ ...settingProps, sources: Type.Optional(Type.Record(Type.String(), strict(settingProps))) });
const Provider = strict({ name: Type.String({ minLength: 1 }), match: Type.Array(Type.String({ minLength: 2 }), { minItems: 1 }), ...Block.properties });
const Rule = strict({
  name: Type.String({ minLength: 1 }),
  reply: Type.String({ minLength: 1, description: 'regular expression on the whole reply line' }),
  threshold: Type.Optional(Type.Union([Type.Literal('immediate'), Type.String({ pattern: RATE_PATTERN })])),
  action: Type.Union([Type.Literal('suspend'), Type.Literal('throttle'), Type.Literal('fail')]),
  duration: Type.Optional(Type.String({ pattern: DURATION_PATTERN })),
  rate: Type.Optional(Type.String({ pattern: RATE_PATTERN })),
  scope: Type.Optional(Type.Union([Type.Literal('source'), Type.Literal('site')])),
});
const ShapingFile = strict({
  default: Type.Optional(Block),
  rules: Type.Optional(Type.Array(Rule)),
  providers: Type.Optional(Type.Array(Provider)),
  domains: Type.Optional(Type.Record(Type.String({ minLength: 1 }), Block)),
});

type BlockDoc = Static<typeof Block>;
type ProviderDoc = Static<typeof Provider>;
type LayerValues = Partial<Record<SettingName, string | number | null>>;

export interface Explanation {
  domain: string;
  source: string;
  provider: string | null;
  settings: ShapingSettings;
  /** where each value came from, e.g. "provider google", "domains.example.com sources.s1" */
  origins: Record<SettingName, string>;
}

/** What applies when the shaping file says nothing (the usual values of production MTAs). */
export const BUILT_IN: ShapingSettings = {
  connections: 20,
  messages_per_connection: 100,
  recipients_per_transaction: 100,
  rate: null,
  connection_rate: null,
  tls: 'opportunistic',
  connect_timeout: 30_000,
  idle_timeout: 5_000,
};

const NAMES: SettingName[] = ['connections', 'messages_per_connection', 'recipients_per_transaction', 'rate', 'connection_rate', 'tls', 'connect_timeout', 'idle_timeout'];

export class Shaping {
  private constructor(
    readonly file: string | null,
    private readonly doc: Static<typeof ShapingFile>,
    /** adaptive backoff rules, in file order */
    readonly rules: BackoffRule[] = [],
  ) {}

  /** Reads and validates the shaping file; problems are named by key path, all at once. */
  static load(file: string | null): Shaping {
    if (!file) return new Shaping(null, {});
    let doc: unknown;
    try {
      doc = YAML.parse(fs.readFileSync(file, 'utf8')) ?? {};
    } catch (err) {
      throw new ConfigError([`shaping: cannot read ${file}: ${(err as Error).message}`]);
    }
    return Shaping.fromDocument(doc, file);
  }

  static fromDocument(doc: unknown, file: string | null = null): Shaping {
    const problems = schemaProblems(ShapingFile, doc, { [RATE_PATTERN]: 'a rate; write it like "100/min", "20000/day" or "5/s"' }).map((p) => `shaping: ${p}`);
    if (problems.length) throw new ConfigError(problems);
    const typed = doc as Static<typeof ShapingFile>;
    const rules: BackoffRule[] = [];
    (typed.rules ?? []).forEach((r, i) => {
      const at = `shaping: rules[${i}]`;
      let reply: RegExp | null = null;
      try {
        reply = new RegExp(r.reply, 'i');
      } catch (err) {
        problems.push(`${at}.reply: ${(err as Error).message}`);
      }
      if (r.action !== 'fail' && !r.duration) problems.push(`${at}.duration: a ${r.action} rule needs a duration, like "10m"`);
      if (r.action === 'throttle' && !r.rate) problems.push(`${at}.rate: a throttle rule needs a rate, like "10/min"`);
      if (r.action === 'fail' && r.threshold && r.threshold !== 'immediate') problems.push(`${at}.threshold: a fail rule acts on each matching reply; leave threshold out`);
      if (reply)
        rules.push({
          name: r.name,
          reply,
          threshold: r.threshold && r.threshold !== 'immediate' ? parseRate(r.threshold) : null,
          action: r.action,
          durationMs: r.duration ? parseDuration(r.duration) : 0,
          rate: r.rate ? parseRate(r.rate) : null,
          scope: r.scope ?? 'source',
        });
    });
    if (problems.length) throw new ConfigError(problems);
    const domains: Record<string, BlockDoc> = {};
    for (const [d, block] of Object.entries(typed.domains ?? {})) domains[d.toLowerCase()] = block;
    return new Shaping(file, { ...typed, domains }, rules);
  }

  /** A domain with its own block gets its own ready queues, so that its limits are its own. */
  hasDomainBlock(domain: string): boolean {
    return Object.hasOwn(this.doc.domains ?? {}, domain.toLowerCase());
  }

  providerFor(mxHosts: string[]): ProviderDoc | null {
    for (const p of this.doc.providers ?? []) {
      const hit = mxHosts.some((h) => p.match.some((m) => suffixMatch(h.toLowerCase(), m.toLowerCase())));
      if (hit) return p;
    }
    return null;
  }

  explain(opts: { domain: string; mxHosts: string[]; source: string }): Explanation {
    const layers: Array<[string, LayerValues | undefined]> = [];
    const withSources = (name: string, block: BlockDoc | undefined) => {
      layers.push([name, block]);
      const own = block?.sources?.[opts.source];
      if (own) layers.push([`${name} sources.${opts.source}`, own]);
    };
    withSources('default', this.doc.default);
    const provider = this.providerFor(opts.mxHosts);
    if (provider) withSources(`provider ${provider.name}`, provider);
    const domain = opts.domain.toLowerCase();
    if (this.hasDomainBlock(domain)) withSources(`domains.${domain}`, this.doc.domains![domain]);

    const settings = { ...BUILT_IN };
    const origins = Object.fromEntries(NAMES.map((n) => [n, 'built-in'])) as Record<SettingName, string>;
    for (const [origin, values] of layers) {
      if (!values) continue;
      for (const name of NAMES) {
        if (!(name in values) || values[name] === undefined) continue;
        (settings as Record<SettingName, unknown>)[name] = convert(name, values[name]!);
        origins[name] = origin;
      }
    }
    return { domain, source: opts.source, provider: provider?.name ?? null, settings, origins };
  }
}

function suffixMatch(host: string, pattern: string): boolean {
  const p = pattern.startsWith('.') ? pattern : `.${pattern}`;
  return host.endsWith(p) || host === p.slice(1);
}

function convert(name: SettingName, value: string | number | null): ShapingSettings[SettingName] {
  switch (name) {
    case 'rate':
    case 'connection_rate':
      return value === null ? null : parseRate(String(value));
    case 'connect_timeout':
    case 'idle_timeout':
      return parseDuration(String(value));
    default:
      return value as never;
  }
}

/** Settings as an operator reads them (rates and durations as written). */
export function describeSettings(s: ShapingSettings): Record<string, string | number | null> {
  return {
    connections: s.connections,
    messages_per_connection: s.messages_per_connection,
    recipients_per_transaction: s.recipients_per_transaction,
    rate: s.rate?.text ?? null,
    connection_rate: s.connection_rate?.text ?? null,
    tls: s.tls,
    connect_timeout: `${s.connect_timeout}ms`,
    idle_timeout: `${s.idle_timeout}ms`,
  };
}
