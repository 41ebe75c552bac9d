/**
 * The node's configuration: one YAML file, validated against a schema at start. An error names the key
 * path and the reason, and nothing starts half-configured.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Type, type Static, type TSchema } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import YAML from 'yaml';
import { DURATION_PATTERN, SIZE_PATTERN, parseDuration, parseSize } from './units.js';
import { parseCidr } from './net.js';
import { RATE_PATTERN } from '../mta/rate.js';
import { WEBHOOK_ID_PATTERN, resolveWebhooks, type WebhookSettings } from '../events/webhook-config.js';

const Duration = (def: string, description: string) =>
  Type.String({ pattern: DURATION_PATTERN, default: def, description });
const Size = (def: string, description: string) =>
  Type.Union([Type.String({ pattern: SIZE_PATTERN }), Type.Integer({ minimum: 0 })], { default: def, description });
const Port = (def: number) => Type.Integer({ minimum: 0, maximum: 65535, default: def });
const Host = (def: string) => Type.String({ minLength: 1, default: def });
const Strict = <T extends Record<string, TSchema>>(props: T, def: object = {}) =>
  Type.Object(props, { additionalProperties: false, default: def });

const TlsFiles = Type.Object(
  {
    cert_file: Type.String({ minLength: 1, description: 'PEM certificate chain' }),
    key_file: Type.String({ minLength: 1, description: 'PEM private key' }),
  },
  { additionalProperties: false },
);

const SubmissionListener = Strict({
  host: Host('127.0.0.1'),
  port: Port(2587),
  tls: Type.Optional(TlsFiles),
  max_message_size: Size('25MB', 'larger messages are refused with 552'),
  max_recipients: Type.Integer({ minimum: 1, default: 1000 }),
  max_connections_per_ip: Type.Integer({ minimum: 1, default: 50 }),
  max_connections: Type.Integer({ minimum: 1, default: 2000 }),
  idle_timeout: Duration('2m', 'close a session idle this long'),
  data_timeout: Duration('10m', 'longest a client may take to send one message'),
});

const ControlListener = Strict({ host: Host('127.0.0.1'), port: Port(8025) });

const InboundListener = Strict({
  host: Host('127.0.0.1'),
  port: Port(2525),
  tls: Type.Optional(TlsFiles),
  max_message_size: Size('25MB', 'larger reports are refused with 552'),
  max_connections_per_ip: Type.Integer({ minimum: 1, default: 20 }),
  max_connections: Type.Integer({ minimum: 1, default: 500 }),
  idle_timeout: Duration('1m', 'close a session idle this long'),
  data_timeout: Duration('5m', 'longest a client may take to send one message'),
});

const TrackingListener = Strict({
  host: Host('127.0.0.1'),
  port: Port(8080),
  tls: Type.Optional(TlsFiles),
  trusted_proxies: Type.Array(Type.String(), { default: [], description: 'CIDRs of reverse proxies whose X-Forwarded-For is believed' }),
});

const Stream = Type.Union([Type.Literal('marketing'), Type.Literal('transactional')]);

const DomainName = Type.String({ pattern: '^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)+$' });

const SmtpUser = Type.Object(
  { username: Type.String({ minLength: 1 }), password: Type.String({ minLength: 1 }), tenant: Type.String({ minLength: 1 }) },
  { additionalProperties: false },
);

const Route = Type.Object(
  {
    domain: Type.String({ pattern: '^(\\*\\.)?[A-Za-z0-9.-]+$', description: 'exact domain or *.suffix' }),
    host: Type.String({ minLength: 1 }),
    port: Type.Integer({ minimum: 1, maximum: 65535, default: 25 }),
    auth: Type.Optional(Type.Object({ user: Type.String(), pass: Type.String() }, { additionalProperties: false })),
    tls: Type.Optional(Type.Union([Type.Literal('required'), Type.Literal('opportunistic'), Type.Literal('none')])),
  },
  { additionalProperties: false },
);

const DATE_PATTERN = '^\\d{4}-\\d{2}-\\d{2}$';

const SourceWarmup = Type.Object(
  {
    plan: Type.String({ minLength: 1, description: 'a plan of the warmup file or warmup.plans' }),
    start: Type.String({ pattern: DATE_PATTERN, description: 'YYYY-MM-DD (UTC): the first day the source takes mail' }),
  },
  { additionalProperties: false },
);

const Source = Type.Object(
  {
    name: Type.String({ minLength: 1 }),
    address: Type.String({ minLength: 1 }),
    ehlo: Type.String({ minLength: 1 }),
    warmup: Type.Optional(SourceWarmup),
  },
  { additionalProperties: false },
);

const Webhook = Type.Object(
  {
    id: Type.Optional(Type.String({ pattern: WEBHOOK_ID_PATTERN, description: 'stable name (letters, digits, . _ -); default derived from tenant and url' })),
    tenant: Type.String({ minLength: 1, description: 'a tenant, or "*" for every tenant and node events' }),
    url: Type.String({ minLength: 1 }),
    secret: Type.String({ minLength: 16, description: 'HMAC-SHA256 key of the Tern-Signature header' }),
    events: Type.Array(Type.String({ minLength: 1 }), { minItems: 1, description: 'event types, or ["*"]' }),
  },
  { additionalProperties: false },
);

const DkimKey = Type.Object(
  { domain: Type.String({ minLength: 1 }), selector: Type.String({ pattern: '^[A-Za-z0-9._-]+$' }), key_file: Type.String({ minLength: 1 }) },
  { additionalProperties: false },
);

export const ConfigSchema = Strict({
  hostname: Type.String({ minLength: 1, default: os.hostname(), description: 'name in greetings and Message-IDs' }),
  data_dir: Type.String({ minLength: 1, default: './data' }),
  log: Strict({
    level: Type.Union(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].map((l) => Type.Literal(l)), { default: 'info' }),
    file: Type.Optional(Type.String({ description: 'write logs here instead of stdout' })),
  }),
  listeners: Strict({ submission: SubmissionListener, control: ControlListener, inbound: InboundListener, tracking: TrackingListener }),
  relay: Strict({ trusted_networks: Type.Array(Type.String(), { default: [] }) }),
  smtp_users: Type.Array(SmtpUser, { default: [] }),
  dns: Strict({
    servers: Type.Array(Type.String({ minLength: 1 }), { default: [] }),
    timeout: Duration('5s', 'per DNS query'),
  }),
  routes: Type.Array(Route, { default: [] }),
  pools: Type.Record(Type.String({ minLength: 1 }), Strict({ sources: Type.Array(Source, { minItems: 1 }) }), {
    default: { default: { sources: [{ name: 'default', address: '0.0.0.0', ehlo: os.hostname() }] } },
  }),
  tenants: Type.Record(Type.String({ minLength: 1 }), Strict({
    pool: Type.String({ minLength: 1, default: 'default' }),
    bounce_domain: Type.Optional(DomainName),
    tracking: Type.Optional(Type.Boolean({ description: 'open and click tracking for this tenant; default tracking.enabled' })),
    list_unsubscribe: Type.Boolean({ default: true, description: 'false: no List-Unsubscribe on transactional mail (marketing mail always has it)' }),
    stream: Type.Optional(Stream),
  }), {
    default: { default: { pool: 'default' } },
  }),
  dkim: Strict({ keys: Type.Array(DkimKey, { default: [] }), workers: Type.Integer({ minimum: 0, default: 0, description: '0 = one per core' }) }),
  delivery: Strict({
    smtp_port: Type.Integer({ minimum: 1, maximum: 65535, default: 25, description: 'port of MX hosts (routes name their own)' }),
    command_timeout: Duration('5m', 'one SMTP reply'),
    data_timeout: Duration('10m', 'the reply after the message data'),
    mx_down_for: Duration('2m', 'skip an MX host that refused a connection for this long'),
    memory_queue_limit: Type.Integer({ minimum: 100, default: 20_000, description: 'queued recipients held in memory; the rest wait on disk' }),
    memory_queue_per_domain: Type.Optional(Type.Integer({ minimum: 1, description: "most of the memory tier one domain may hold; default a quarter of memory_queue_limit" })),
    tls_ca_file: Type.Optional(Type.String({ minLength: 1, description: 'PEM CA certificates trusted for outbound TLS and MTA-STS policy fetches, besides the built-in list' })),
    mta_sts: Strict({
      enabled: Type.Boolean({ default: true, description: 'honour recipient domains\' MTA-STS policies (RFC 8461)' }),
      https_port: Type.Integer({ minimum: 1, maximum: 65535, default: 443, description: 'port of the mta-sts.<domain> policy hosts: 443 (RFC 8461); another value only for tests' }),
      fetch_timeout: Duration('10s', 'longest a policy fetch may take'),
    }),
  }),
  retry: Strict({
    schedule: Type.Array(Type.String({ pattern: DURATION_PATTERN }), {
      minItems: 1,
      default: ['5m', '10m', '20m', '40m', '1h', '2h', '4h'],
      description: 'wait before each retry; the last repeats',
    }),
    jitter: Type.Number({ minimum: 0, maximum: 1, default: 0.1 }),
    max_age: Duration('3d', 'give up (expire) after this long'),
  }),
  events: Strict({ retention: Duration('7d', 'keep events this long') }),
  webhooks: Type.Array(Webhook, { default: [] }),
  webhook_delivery: Strict({
    allow_networks: Type.Array(Type.String(), { default: [], description: 'CIDRs webhooks may reach although private/loopback; plain http only to these' }),
    timeout: Duration('10s', 'one webhook request, connection to response'),
    batch_size: Type.Integer({ minimum: 1, maximum: 1000, default: 100, description: 'most events in one webhook request' }),
    backoff_initial: Duration('2s', 'wait after the first failed webhook request; doubles after each further failure'),
    backoff_max: Duration('10m', 'longest wait between webhook retries'),
    disable_after: Duration('24h', 'an endpoint failing this long without a success is disabled'),
  }),
  control: Strict({
    admin_token: Type.Optional(Type.String({ minLength: 16, description: 'operator token for admin routes; TERN_ADMIN_TOKEN wins' })),
    public_url: Type.Optional(Type.String({ pattern: '^https?://[^\\s/]+(/[^\\s]*)?$', description: 'base URL of the admin web, for links in account mail; default: the control listener' })),
    mail_from: Type.Optional(Type.String({ pattern: '^[^\\s@<>]+@[A-Za-z0-9.-]+$', description: 'From address of account mail (password resets, invitations); default tern@<hostname>' })),
    session_ttl: Duration('12h', 'a web session lasts this long after login'),
    api_rate: Type.String({ pattern: RATE_PATTERN, default: '1200/min', description: 'control API requests per API key, session or operator token (per client address without credentials)' }),
    login_rate: Type.String({ pattern: RATE_PATTERN, default: '5/min', description: 'login and password-reset attempts per client address and account' }),
  }),
  shaping: Strict({ file: Type.Optional(Type.String({ minLength: 1, description: 'shaping rules; default: the shipped config/shaping.yaml' })) }),
  bounce: Strict({
    rules_file: Type.Optional(Type.String({ minLength: 1, description: 'bounce classification rules; default: the shipped config/bounce-rules.yaml' })),
    domain: Type.Optional(DomainName),
    fbl_domains: Type.Array(DomainName, { default: [] }),
    verp: Type.Boolean({ default: true, description: 'VERP envelope senders (one transaction per recipient)' }),
    soft_bounce_limit: Type.Integer({ minimum: 1, default: 5 }),
    soft_bounce_window: Duration('7d', 'soft bounces counted within this long'),
    feedback_sender_id: Type.String({ pattern: '^[A-Za-z0-9._-]{1,64}$', default: 'tern', description: 'last field of Feedback-ID' }),
  }),
  domains: Strict({
    inbound_mx: Type.Optional(Type.String({ pattern: DomainName.pattern, description: 'host the MX of sending domains\' bounce subdomains points to (the inbound listener); default: hostname' })),
    tracking_cname: Type.Optional(Type.String({ pattern: DomainName.pattern, description: 'host the tracking subdomains of sending domains are a CNAME of; default: hostname' })),
    spf_include: Type.Optional(Type.String({ pattern: DomainName.pattern, description: 'SPF records of sending domains say include:<this>; default: the ip4:/ip6: of the tenant\'s pool' })),
    dmarc_rua: Type.Optional(Type.String({ pattern: '^[^\\s@<>;,]+@[A-Za-z0-9.-]+$', description: 'address in the suggested DMARC record\'s rua=; default postmaster@<domain>' })),
    bounce_label: Type.String({ pattern: '^[a-z0-9]([a-z0-9-]*[a-z0-9])?$', default: 'bounces', description: 'a sending domain\'s bounce subdomain is <label>.<domain>' }),
    tracking_label: Type.String({ pattern: '^[a-z0-9]([a-z0-9-]*[a-z0-9])?$', default: 'track', description: 'a sending domain\'s tracking subdomain is <label>.<domain>' }),
    recheck: Duration('6h', 'the DNS of every sending domain is checked again this often'),
  }),
  tracking: Strict({
    enabled: Type.Boolean({ default: false, description: 'open and click tracking for tenants that do not say' }),
    base_url: Type.Optional(Type.String({ minLength: 1, description: 'public URL of the tracking listener' })),
    keys: Type.Array(Type.String({ minLength: 1 }), { default: [], description: 'key files, the signing key first; default data_dir/keys/tracking.key' }),
    scanner_window: Duration('10s', 'a click this soon after delivery is a link scanner'),
    trap_link: Type.Boolean({ default: true, description: 'a hidden link that only machines follow' }),
    agents_file: Type.Optional(Type.String({ minLength: 1, description: 'machine-activity rules; default: the shipped config/tracking-agents.yaml' })),
    retention: Duration('400d', 'how long unique opens and clicks are remembered per recipient'),
  }),
  warmup: Strict({
    file: Type.Optional(Type.String({ minLength: 1, description: 'warmup plans; default: the shipped config/warmup.yaml' })),
    plans: Type.Record(Type.String({ minLength: 1 }), Type.Unknown(), { default: {}, description: 'more plans (same shape as in the file; these win)' }),
    idle_reset: Duration('30d', 'a source that sent nothing for this long starts its plan again'),
  }),
});

/** config/shaping.yaml of this installation, used when the config names no shaping file. */
export const SHIPPED_SHAPING_FILE = path.resolve(import.meta.dirname, '..', '..', 'config', 'shaping.yaml');
/** config/bounce-rules.yaml of this installation, used when the config names no bounce rules file. */
export const SHIPPED_BOUNCE_RULES_FILE = path.resolve(import.meta.dirname, '..', '..', 'config', 'bounce-rules.yaml');
/** config/tracking-agents.yaml of this installation, used when the config names no agents file. */
export const SHIPPED_TRACKING_AGENTS_FILE = path.resolve(import.meta.dirname, '..', '..', 'config', 'tracking-agents.yaml');
/** config/warmup.yaml of this installation, used when the config names no warmup file. */
export const SHIPPED_WARMUP_FILE = path.resolve(import.meta.dirname, '..', '..', 'config', 'warmup.yaml');

export type RawConfig = Static<typeof ConfigSchema>;

/** The validated configuration with durations and sizes in numbers, paths resolved. */
export interface Config {
  raw: RawConfig;
  file: string | null;
  hostname: string;
  dataDir: string;
  log: RawConfig['log'];
  submission: Omit<RawConfig['listeners']['submission'], 'tls'> & { maxMessageSize: number; idleTimeoutMs: number; dataTimeoutMs: number; tls?: { cert: string; key: string } };
  control: RawConfig['listeners']['control'];
  trustedNetworks: ReturnType<typeof parseCidr>[];
  smtpUsers: RawConfig['smtp_users'];
  dns: { servers: string[]; timeoutMs: number };
  routes: RawConfig['routes'];
  pools: RawConfig['pools'];
  tenants: RawConfig['tenants'];
  dkim: { keys: Array<{ domain: string; selector: string; keyFile: string }>; workers: number };
  delivery: {
    smtpPort: number;
    commandTimeoutMs: number;
    dataTimeoutMs: number;
    mxDownMs: number;
    memoryQueueLimit: number;
    memoryQueuePerDomain: number;
    /** extra trusted CAs (PEM file), or null */
    tlsCaFile: string | null;
    mtaSts: { enabled: boolean; httpsPort: number; fetchTimeoutMs: number };
  };
  retry: { scheduleMs: number[]; jitter: number; maxAgeMs: number };
  events: { retentionMs: number };
  webhooks: WebhookSettings;
  shapingFile: string;
  inbound: Omit<RawConfig['listeners']['inbound'], 'tls'> & { maxMessageSize: number; idleTimeoutMs: number; dataTimeoutMs: number; tls?: { cert: string; key: string } };
  bounce: {
    rulesFile: string;
    /** the node's bounce domain (VERP envelope senders of tenants without their own) */
    domain: string;
    /** every domain the inbound listener takes reports for: bounce domains of the node and tenants, FBL domains */
    bounceDomains: string[];
    fblDomains: string[];
    verp: boolean;
    softBounceLimit: number;
    softBounceWindowMs: number;
    feedbackSenderId: string;
  };
  warmup: { file: string; plans: Record<string, unknown>; idleResetDays: number };
  /** sending domains made through the control API: what their DNS records point to */
  domains: { inboundMx: string; trackingCname: string; spfInclude: string | null; dmarcRua: string | null; bounceLabel: string; trackingLabel: string; recheckMs: number };
  tracking: {
    /** null: no tracking listener, no tracking, no List-Unsubscribe */
    baseUrl: string | null;
    enabled: boolean;
    /** key files (signing key first); empty: data_dir/keys/tracking.key and keys/tracking.old*.key */
    keyFiles: string[];
    scannerWindowMs: number;
    trapLink: boolean;
    agentsFile: string;
    retentionMs: number;
    listener: Omit<RawConfig['listeners']['tracking'], 'tls'> & { tls?: { cert: string; key: string } };
  };
  /** operator token for admin routes (TERN_ADMIN_TOKEN, else control.admin_token); null = admin routes refused */
  adminToken: string | null;
}

export class ConfigError extends Error {
  constructor(public readonly problems: string[]) {
    super(`config: ${problems.join('\nconfig: ')}`);
    this.name = 'ConfigError';
  }
}

function pointerToPath(pointer: string): string {
  return pointer
    .split('/')
    .slice(1)
    .map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'))
    .reduce((acc, p) => (/^\d+$/.test(p) ? `${acc}[${p}]` : acc ? `${acc}.${p}` : p), '');
}

function describe(value: unknown): string {
  return value === undefined ? 'missing' : JSON.stringify(value);
}

/** Validates a parsed YAML document; returns the typed config or throws ConfigError listing every problem. */
export function buildConfig(doc: unknown, file: string | null = null): Config {
  if (doc === null || doc === undefined) doc = {};
  if (typeof doc !== 'object' || Array.isArray(doc)) throw new ConfigError(['the file must hold a mapping of keys']);
  const withDefaults = Value.Default(ConfigSchema, structuredClone(doc)) as RawConfig;
  const problems = schemaProblems(ConfigSchema, withDefaults, { [DATE_PATTERN]: 'a date; write it like "2026-12-01"', [RATE_PATTERN]: 'a rate; write it like "100/min" or "5/10min"' });
  if (problems.length) throw new ConfigError(problems);
  return resolve(withDefaults, file, problems);
}

/**
 * Checks a document against a schema; each problem is a sentence starting with the key path.
 * `patterns` maps a string pattern of the schema to what a valid value looks like.
 */
export function schemaProblems(schema: TSchema, doc: unknown, patterns: Record<string, string> = {}): string[] {
  const hints: Record<string, string> = { [DURATION_PATTERN]: 'a duration; write it like "30s", "5m", "1h" or "3d"', ...patterns };
  const problems: string[] = [];
  const seen = new Set<string>();
  for (const err of Value.Errors(schema, doc)) {
    const at = pointerToPath(err.path) || '(top level)';
    if (seen.has(at)) continue; // a union reports once per branch; the first reason is enough
    seen.add(at);
    // a value that may be several things (a rate or null) is reported at the union: look for a pattern in it
    const candidates = [err.schema, ...((err.schema.anyOf as TSchema[] | undefined) ?? [])];
    const pattern = candidates.map((c) => c.pattern).find((p): p is string => typeof p === 'string' && p in hints);
    const hint = typeof err.value === 'string' && pattern ? hints[pattern] : undefined;
    if (/additional|unexpected property/i.test(err.message)) {
      // reported at the unknown key's own path; err.schema is the object that does not allow it
      const allowed = Object.keys((err.schema as { properties?: object }).properties ?? {});
      problems.push(`${at}: unknown key; the keys allowed here are ${allowed.join(', ')}`);
    } else if (hint) {
      problems.push(`${at}: ${describe(err.value)} is not ${hint}`);
    } else {
      problems.push(`${at}: ${describe(err.value)} is invalid: ${err.message.toLowerCase()}`);
    }
  }
  return problems;
}

function resolve(raw: RawConfig, file: string | null, problems: string[]): Config {
  const baseDir = file ? path.dirname(path.resolve(file)) : process.cwd();
  // data_dir is relative to the working directory (npm start from the checkout uses ./data); files named
  // in the config are relative to the config file, as in most daemons' configs.
  const dataDir = path.resolve(raw.data_dir);
  const fromConfig = (p: string) => path.resolve(baseDir, p);
  const sub = raw.listeners.submission;

  const trustedNetworks: Config['trustedNetworks'] = [];
  raw.relay.trusted_networks.forEach((cidr, i) => {
    try {
      trustedNetworks.push(parseCidr(cidr));
    } catch (err) {
      problems.push(`relay.trusted_networks[${i}]: ${(err as Error).message}`);
    }
  });
  raw.dns.servers.forEach((s, i) => {
    if (!/^(\d{1,3}(\.\d{1,3}){3}|\[[0-9a-fA-F:]+\]|[0-9a-fA-F:]+)(:\d{1,5})?$/.test(s))
      problems.push(`dns.servers[${i}]: "${s}" is not an IP address or ip:port`);
  });
  // the default tenant (trusted-network mail) and the default pool exist even when the file names others
  raw.pools.default ??= { sources: [{ name: 'default', address: '0.0.0.0', ehlo: raw.hostname }] };
  raw.tenants.default ??= { pool: 'default', list_unsubscribe: true };
  for (const [tenant, t] of Object.entries(raw.tenants)) {
    if (!raw.pools[t.pool]) problems.push(`tenants.${tenant}.pool: pool "${t.pool}" is not defined under pools`);
  }
  raw.smtp_users.forEach((u, i) => {
    if (!raw.tenants[u.tenant]) problems.push(`smtp_users[${i}].tenant: tenant "${u.tenant}" is not defined under tenants`);
  });
  const sourceNames = new Set<string>();
  for (const [pool, p] of Object.entries(raw.pools)) {
    p.sources.forEach((s, i) => {
      if (sourceNames.has(s.name)) problems.push(`pools.${pool}.sources[${i}].name: source "${s.name}" is defined twice`);
      sourceNames.add(s.name);
      if (!/^(\d{1,3}(\.\d{1,3}){3}|[0-9a-fA-F:]+)$/.test(s.address))
        problems.push(`pools.${pool}.sources[${i}].address: "${s.address}" is not an IP address`);
    });
  }
  const dkimKeys = raw.dkim.keys.map((k, i) => {
    const keyFile = fromConfig(k.key_file);
    if (!fs.existsSync(keyFile)) problems.push(`dkim.keys[${i}].key_file: ${keyFile} does not exist; create it with "tern dkim keygen"`);
    return { domain: k.domain.toLowerCase(), selector: k.selector, keyFile };
  });
  let tls: { cert: string; key: string } | undefined;
  if (sub.tls) {
    tls = { cert: fromConfig(sub.tls.cert_file), key: fromConfig(sub.tls.key_file) };
    if (!fs.existsSync(tls.cert)) problems.push(`listeners.submission.tls.cert_file: ${tls.cert} does not exist`);
    if (!fs.existsSync(tls.key)) problems.push(`listeners.submission.tls.key_file: ${tls.key} does not exist`);
  }
  const tlsCaFile = raw.delivery.tls_ca_file ? fromConfig(raw.delivery.tls_ca_file) : null;
  if (tlsCaFile) {
    const pem = fs.existsSync(tlsCaFile) ? fs.readFileSync(tlsCaFile, 'utf8') : null;
    if (pem === null) problems.push(`delivery.tls_ca_file: ${tlsCaFile} does not exist`);
    else if (!pem.includes('-----BEGIN CERTIFICATE-----')) problems.push(`delivery.tls_ca_file: ${tlsCaFile} holds no PEM certificate ("-----BEGIN CERTIFICATE-----")`);
  }
  const shapingFile = raw.shaping.file ? fromConfig(raw.shaping.file) : SHIPPED_SHAPING_FILE;
  if (!fs.existsSync(shapingFile)) problems.push(`shaping.file: ${shapingFile} does not exist`);
  const bounceRulesFile = raw.bounce.rules_file ? fromConfig(raw.bounce.rules_file) : SHIPPED_BOUNCE_RULES_FILE;
  if (!fs.existsSync(bounceRulesFile)) problems.push(`bounce.rules_file: ${bounceRulesFile} does not exist`);
  const bounceDomain = (raw.bounce.domain ?? `bounces.${raw.hostname}`).toLowerCase();
  const inbound = raw.listeners.inbound;
  let inboundTls: { cert: string; key: string } | undefined;
  if (inbound.tls) {
    inboundTls = { cert: fromConfig(inbound.tls.cert_file), key: fromConfig(inbound.tls.key_file) };
    if (!fs.existsSync(inboundTls.cert)) problems.push(`listeners.inbound.tls.cert_file: ${inboundTls.cert} does not exist`);
    if (!fs.existsSync(inboundTls.key)) problems.push(`listeners.inbound.tls.key_file: ${inboundTls.key} does not exist`);
  }
  let inboundMaxSize = 0;
  try {
    inboundMaxSize = parseSize(inbound.max_message_size);
  } catch (err) {
    problems.push(`listeners.inbound.max_message_size: ${(err as Error).message}`);
  }
  const warmupFile = raw.warmup.file ? fromConfig(raw.warmup.file) : SHIPPED_WARMUP_FILE;
  if (!fs.existsSync(warmupFile)) problems.push(`warmup.file: ${warmupFile} does not exist`);
  for (const [pool, p] of Object.entries(raw.pools))
    p.sources.forEach((s, i) => {
      if (s.warmup && Number.isNaN(Date.parse(s.warmup.start))) problems.push(`pools.${pool}.sources[${i}].warmup.start: "${s.warmup.start}" is not a date; write it like "2026-12-01"`);
    });
  const webhooks = resolveWebhooks(raw.webhooks, raw.webhook_delivery, { tenants: Object.keys(raw.tenants), retentionMs: parseDuration(raw.events.retention) }, problems);
  const tracking = resolveTracking(raw, fromConfig, problems);
  let maxMessageSize = 0;
  try {
    maxMessageSize = parseSize(sub.max_message_size);
  } catch (err) {
    problems.push(`listeners.submission.max_message_size: ${(err as Error).message}`);
  }
  if (problems.length) throw new ConfigError(problems);

  return {
    raw,
    file,
    hostname: raw.hostname,
    dataDir,
    log: raw.log,
    submission: {
      ...sub,
      maxMessageSize,
      idleTimeoutMs: parseDuration(sub.idle_timeout),
      dataTimeoutMs: parseDuration(sub.data_timeout),
      tls,
    },
    control: raw.listeners.control,
    trustedNetworks,
    smtpUsers: raw.smtp_users,
    dns: { servers: raw.dns.servers, timeoutMs: parseDuration(raw.dns.timeout) },
    routes: raw.routes.map((r) => ({ ...r, domain: r.domain.toLowerCase() })),
    pools: raw.pools,
    tenants: raw.tenants,
    dkim: { keys: dkimKeys, workers: raw.dkim.workers },
    delivery: {
      smtpPort: raw.delivery.smtp_port,
      commandTimeoutMs: parseDuration(raw.delivery.command_timeout),
      dataTimeoutMs: parseDuration(raw.delivery.data_timeout),
      mxDownMs: parseDuration(raw.delivery.mx_down_for),
      memoryQueueLimit: raw.delivery.memory_queue_limit,
      memoryQueuePerDomain: Math.min(raw.delivery.memory_queue_per_domain ?? Math.floor(raw.delivery.memory_queue_limit / 4), raw.delivery.memory_queue_limit),
      tlsCaFile,
      mtaSts: { enabled: raw.delivery.mta_sts.enabled, httpsPort: raw.delivery.mta_sts.https_port, fetchTimeoutMs: parseDuration(raw.delivery.mta_sts.fetch_timeout) },
    },
    retry: { scheduleMs: raw.retry.schedule.map(parseDuration), jitter: raw.retry.jitter, maxAgeMs: parseDuration(raw.retry.max_age) },
    events: { retentionMs: parseDuration(raw.events.retention) },
    webhooks,
    shapingFile,
    inbound: {
      ...raw.listeners.inbound,
      maxMessageSize: inboundMaxSize,
      idleTimeoutMs: parseDuration(raw.listeners.inbound.idle_timeout),
      dataTimeoutMs: parseDuration(raw.listeners.inbound.data_timeout),
      tls: inboundTls,
    },
    bounce: {
      rulesFile: bounceRulesFile,
      domain: bounceDomain,
      bounceDomains: [...new Set([bounceDomain, ...Object.values(raw.tenants).flatMap((t) => (t.bounce_domain ? [t.bounce_domain.toLowerCase()] : []))])],
      fblDomains: raw.bounce.fbl_domains.map((d) => d.toLowerCase()),
      verp: raw.bounce.verp,
      softBounceLimit: raw.bounce.soft_bounce_limit,
      softBounceWindowMs: parseDuration(raw.bounce.soft_bounce_window),
      feedbackSenderId: raw.bounce.feedback_sender_id,
    },
    warmup: { file: warmupFile, plans: raw.warmup.plans, idleResetDays: Math.max(1, Math.round(parseDuration(raw.warmup.idle_reset) / 86_400_000)) },
    domains: {
      inboundMx: (raw.domains.inbound_mx ?? raw.hostname).toLowerCase(),
      trackingCname: (raw.domains.tracking_cname ?? raw.hostname).toLowerCase(),
      spfInclude: raw.domains.spf_include?.toLowerCase() ?? null,
      dmarcRua: raw.domains.dmarc_rua ?? null,
      bounceLabel: raw.domains.bounce_label,
      trackingLabel: raw.domains.tracking_label,
      recheckMs: parseDuration(raw.domains.recheck),
    },
    tracking,
    adminToken: process.env.TERN_ADMIN_TOKEN || raw.control.admin_token || null,
  };
}

/** The tracking keys and listener; a tracked tenant without `tracking.base_url` is a problem. */
function resolveTracking(raw: RawConfig, fromConfig: (p: string) => string, problems: string[]): Config['tracking'] {
  const t = raw.tracking;
  let baseUrl: string | null = null;
  if (t.base_url !== undefined) {
    let url: URL | null = null;
    try {
      url = new URL(t.base_url);
    } catch {
      // reported below
    }
    if (!url || (url.protocol !== 'https:' && url.protocol !== 'http:') || url.search || url.hash || url.username)
      problems.push(`tracking.base_url: "${t.base_url}" is not a URL the tracking listener can be reached at; write it like "https://t.example.com" (no query or fragment)`);
    else baseUrl = url.href.replace(/\/+$/, '');
  }
  if (baseUrl === null && t.base_url === undefined) {
    if (t.enabled) problems.push('tracking.base_url: missing; tracking.enabled needs the public URL of the tracking listener, like "https://t.example.com"');
    for (const [tenant, c] of Object.entries(raw.tenants))
      if (c.tracking) problems.push(`tenants.${tenant}.tracking: tracking is on but tracking.base_url is missing; set it to the public URL of the tracking listener`);
  }
  const keyFiles = t.keys.map((k, i) => {
    const file = fromConfig(k);
    if (!fs.existsSync(file)) problems.push(`tracking.keys[${i}]: ${file} does not exist; make one with: openssl rand -hex 32 > ${file}`);
    return file;
  });
  const agentsFile = t.agents_file ? fromConfig(t.agents_file) : SHIPPED_TRACKING_AGENTS_FILE;
  if (!fs.existsSync(agentsFile)) problems.push(`tracking.agents_file: ${agentsFile} does not exist`);
  const l = raw.listeners.tracking;
  let tls: { cert: string; key: string } | undefined;
  if (l.tls) {
    tls = { cert: fromConfig(l.tls.cert_file), key: fromConfig(l.tls.key_file) };
    if (!fs.existsSync(tls.cert)) problems.push(`listeners.tracking.tls.cert_file: ${tls.cert} does not exist`);
    if (!fs.existsSync(tls.key)) problems.push(`listeners.tracking.tls.key_file: ${tls.key} does not exist`);
  }
  l.trusted_proxies.forEach((cidr, i) => {
    try {
      parseCidr(cidr);
    } catch (err) {
      problems.push(`listeners.tracking.trusted_proxies[${i}]: ${(err as Error).message}`);
    }
  });
  return {
    baseUrl,
    enabled: t.enabled,
    keyFiles,
    scannerWindowMs: parseDuration(t.scanner_window),
    trapLink: t.trap_link,
    agentsFile,
    retentionMs: parseDuration(t.retention),
    listener: { host: l.host, port: l.port, trusted_proxies: l.trusted_proxies, tls },
  };
}

/** Reads and validates a YAML config file. */
export function loadConfig(file: string): Config {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError([`cannot read ${file}: ${(err as Error).message}`]);
  }
  let doc: unknown;
  try {
    doc = YAML.parse(text, { prettyErrors: true });
  } catch (err) {
    throw new ConfigError([`${file} is not valid YAML: ${(err as Error).message}`]);
  }
  return buildConfig(doc, file);
}
