/** `tern` command line: start a node, manage DKIM keys. */
import fs from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { ConfigError, loadConfig } from './core/config.js';
import { generateDkimKey } from './mta/dkim.js';
import { TernNode, explainShaping, mtaStsPolicies } from './node.js';
import { outboundCas } from './core/tls.js';
import { Shaping } from './mta/shaping.js';
import { DnsClient } from './mta/dns.js';
import { DestinationResolver } from './mta/destination.js';
import { queueCommand, QUEUE_USAGE } from './control/queue-cli.js';
import { controlClient } from './control/client.js';
import { readBootstrapOperatorToken } from './control/operator-token.js';
import type { WarmupStatus } from './mta/warmup.js';
import { loadBounceRules } from './bounce/classify.js';
import { DEFAULT_MAX_BYTES } from './bounce/parse.js';
import { BounceParser } from './bounce/parse-pool.js';
import { attributeReport, classifyReport, reportLine } from './bounce/report.js';
import { loadVerpKeys, VerpCodec } from './bounce/verp.js';

const DEFAULT_CONFIG = 'config/tern.yaml';

const USAGE = `usage:
  tern start [--config FILE]          run a node (default config: ${DEFAULT_CONFIG})
  tern dkim keygen --domain D --selector S [--type rsa|ed25519] [--bits 2048] [--dir DIR]
                                      write a DKIM key and print the DNS record to publish
  tern shaping explain DOMAIN [--source NAME] [--config FILE] [--json]
                                      the shaping settings for DOMAIN from SOURCE, and where each comes from
  tern reload [--config FILE]         make the running node re-read its shaping file (same as SIGHUP)
  tern warmup [SOURCE] [--config FILE] [--json]
                                      warmup state of the sources on a plan: day, cap, sent today, per provider
  tern bounce parse FILE... | - [--config FILE]
                                      one JSON line per message: kind, recipients with category, feedback, attribution
${QUEUE_USAGE}`;

function fail(message: string): never {
  process.stderr.write(`${message}\n`);
  process.exit(2);
}

async function start(argv: string[]): Promise<void> {
  const { values } = parseArgs({ args: argv, options: { config: { type: 'string', short: 'c' } } });
  let config;
  try {
    config = loadConfig(values.config ?? DEFAULT_CONFIG);
  } catch (err) {
    if (err instanceof ConfigError) fail(`${err.message}\nThe node was not started.`);
    throw err;
  }
  let node: TernNode;
  try {
    node = await TernNode.start(config);
  } catch (err) {
    fail(`tern: could not start: ${(err as Error).message}`);
  }
  process.stdout.write(
    `Tern is running: SMTP submission on ${config.submission.host}:${node.ports.submission}, inbound (bounces, complaints) on ${config.inbound.host}:${node.ports.inbound}, control (metrics, health) on http://${config.control.host}:${node.ports.control}\n`,
  );
  if (node.tracking) process.stdout.write(`      tracking (opens, clicks, unsubscribes) on ${config.tracking.listener.host}:${node.ports.tracking}, reached at ${config.tracking.baseUrl}\n`);
  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    node.log.info({ signal }, 'stopping');
    await node.stop();
    process.exit(0);
  };
  process.on('SIGINT', () => void stop('SIGINT'));
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGHUP', () => node.reloadShaping());
}

function configOrExit(file: string | undefined) {
  try {
    return loadConfig(file ?? DEFAULT_CONFIG);
  } catch (err) {
    if (err instanceof ConfigError) fail(err.message);
    throw err;
  }
}

async function shaping(argv: string[]): Promise<void> {
  const [sub, ...rest] = argv;
  const { values, positionals } = parseArgs({ args: rest, allowPositionals: true, options: { source: { type: 'string' }, config: { type: 'string', short: 'c' }, json: { type: 'boolean', default: false } } });
  if (sub !== 'explain' || positionals.length !== 1) fail(USAGE);
  const config = configOrExit(values.config);
  let rules;
  try {
    rules = Shaping.load(config.shapingFile);
  } catch (err) {
    fail((err as Error).message);
  }
  const dns = new DnsClient(config.dns.servers, config.dns.timeoutMs);
  const resolver = new DestinationResolver(dns, config.routes, config.delivery.mxDownMs, config.delivery.smtpPort);
  try {
    const mtaSts = mtaStsPolicies(config, dns, resolver, outboundCas(config.delivery.tlsCaFile));
    const out = await explainShaping(rules, resolver, config, positionals[0]!, values.source, mtaSts);
    if (values.json) {
      process.stdout.write(JSON.stringify(out, null, 2) + '\n');
      return;
    }
    const where = out.route ? `route ${out.route}` : out.site ? `site ${out.site}` : `no destination (${out.destination_error})`;
    const lines = [`${out.domain} from source ${out.source}: ${where}${out.provider ? `, provider ${out.provider}` : ''}`, `shaping file: ${out.shaping_file}`, ''];
    for (const [name, { value, from }] of Object.entries(out.settings)) lines.push(`  ${name.padEnd(28)}${String(value).padEnd(14)}from ${from}`);
    if (out.mta_sts) lines.push('', `mta-sts: ${out.mta_sts.effect}${out.mta_sts.id ? ` (policy ${out.mta_sts.id}, mx ${out.mta_sts.mx.join(', ')}, expires ${out.mta_sts.expires_at})` : ''}${out.mta_sts.note ? `; ${out.mta_sts.note}` : ''}`);
    process.stdout.write(lines.join('\n') + '\n');
  } catch (err) {
    fail(`tern shaping explain: ${(err as Error).message}`);
  }
}

async function reload(argv: string[]): Promise<void> {
  const { values } = parseArgs({ args: argv, options: { config: { type: 'string', short: 'c' } } });
  const config = configOrExit(values.config);
  const token = config.adminToken ?? readBootstrapOperatorToken(config.dataDir);
  if (!token) fail('tern reload: set control.admin_token in the config or TERN_ADMIN_TOKEN, or send SIGHUP to the node');
  const host = config.control.host === '0.0.0.0' ? '127.0.0.1' : config.control.host;
  let res;
  try {
    res = await fetch(`http://${host}:${config.control.port}/api/v1/reload`, { method: 'POST', headers: { authorization: `Bearer ${token}` } });
  } catch (err) {
    fail(`tern reload: no node answers on ${host}:${config.control.port}: ${(err as Error).message}`);
  }
  const body = await res.text();
  process.stdout.write(body + '\n');
  if (!res.ok) process.exit(1);
}

async function warmup(argv: string[]): Promise<void> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: { config: { type: 'string', short: 'c' }, json: { type: 'boolean', default: false } } });
  if (positionals.length > 1) fail(USAGE);
  const api = controlClient(configOrExit(values.config), 'tern warmup');
  let sources: WarmupStatus[];
  try {
    sources = positionals[0] ? [(await api('GET', `/api/v1/warmup/${encodeURIComponent(positionals[0])}`)) as WarmupStatus] : ((await api('GET', '/api/v1/warmup')) as { sources: WarmupStatus[] }).sources;
  } catch (err) {
    fail((err as Error).message);
  }
  if (values.json) {
    process.stdout.write(JSON.stringify(positionals[0] ? sources[0] : { sources }, null, 2) + '\n');
    return;
  }
  if (!sources.length) {
    process.stdout.write('no source is on a warmup plan\n');
    return;
  }
  const cap = (n: number | null) => (n === null ? 'none' : String(n));
  const lines = [`${'SOURCE'.padEnd(16)}${'PLAN'.padEnd(16)}${'STATE'.padEnd(13)}${'DAY'.padEnd(6)}${'CAP'.padEnd(10)}${'SENT'.padEnd(10)}${'RESERVED'.padEnd(10)}LAST SENT`];
  for (const s of sources) {
    lines.push(`${s.source.padEnd(16)}${s.plan.padEnd(16)}${s.state.padEnd(13)}${String(s.day).padEnd(6)}${cap(s.cap).padEnd(10)}${String(s.sent_today).padEnd(10)}${String(s.reserved).padEnd(10)}${s.last_sent ?? '-'}`);
    for (const [p, v] of Object.entries(s.providers)) lines.push(`${''.padEnd(16)}${`  ${p}`.padEnd(35)}${cap(v.cap).padEnd(10)}${String(v.sent_today).padEnd(10)}${v.reserved}`);
  }
  process.stdout.write(lines.join('\n') + '\n');
}

function dkim(argv: string[]): void {
  const [sub, ...rest] = argv;
  if (sub !== 'keygen') fail(USAGE);
  const { values } = parseArgs({
    args: rest,
    options: {
      domain: { type: 'string' },
      selector: { type: 'string' },
      type: { type: 'string', default: 'rsa' },
      bits: { type: 'string', default: '2048' },
      dir: { type: 'string', default: path.join('data', 'dkim') },
    },
  });
  if (!values.domain || !values.selector) fail(`tern dkim keygen: --domain and --selector are required\n${USAGE}`);
  if (values.type !== 'rsa' && values.type !== 'ed25519') fail('tern dkim keygen: --type must be rsa or ed25519');
  const bits = Number(values.bits);
  if (values.type === 'rsa' && (!Number.isInteger(bits) || bits < 1024 || bits > 8192)) fail('tern dkim keygen: --bits must be 1024 to 8192 (2048 recommended)');
  let out;
  try {
    out = generateDkimKey({ domain: values.domain.toLowerCase(), selector: values.selector, type: values.type, bits, dir: values.dir! });
  } catch (err) {
    fail(`tern dkim keygen: ${(err as Error).message}`);
  }
  process.stdout.write(
    `Wrote ${out.keyFile} (mode 0600).\n\nPublish this DNS TXT record:\n${out.name}. IN TXT "${out.txt}"\n\n` +
      `Add to your config:\ndkim:\n  keys:\n    - { domain: ${values.domain}, selector: ${values.selector}, key_file: ${path.resolve(out.keyFile)} }\n`,
  );
}

/** The first `max` bytes of a file or of stdin (the parser reads no more); the rest of stdin is drained. */
async function readMessage(file: string, max: number): Promise<Buffer> {
  if (file === '-') {
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const chunk of process.stdin as AsyncIterable<Buffer>) {
      if (size < max) chunks.push(chunk);
      size += chunk.length;
    }
    return Buffer.concat(chunks).subarray(0, max);
  }
  const handle = await fs.open(file, 'r');
  try {
    const buf = Buffer.alloc(max);
    const { bytesRead } = await handle.read(buf, 0, max, 0);
    return buf.subarray(0, bytesRead);
  } finally {
    await handle.close();
  }
}

/**
 * `tern bounce parse FILE... | -`: one JSON line per input, in input order. A file that cannot be read still
 * gets its line (kind "unknown"), the reason goes to stderr and the exit status is 1.
 */
async function bounce(argv: string[]): Promise<void> {
  const [sub, ...rest] = argv;
  const { values, positionals } = parseArgs({ args: rest, allowPositionals: true, options: { config: { type: 'string', short: 'c' } } });
  if (sub !== 'parse' || positionals.length === 0) fail(USAGE);
  if (positionals.filter((p) => p === '-').length > 1) fail('tern bounce parse: "-" (stdin) holds one message; give it once');
  const config = configOrExit(values.config);
  let rules;
  let codec: VerpCodec | null = null;
  try {
    rules = loadBounceRules(config.bounce.rulesFile);
    // attribution needs the node's VERP key; the command never makes one
    const keys = loadVerpKeys(config.dataDir);
    codec = keys ? new VerpCodec(keys) : null;
  } catch (err) {
    fail((err as Error).message);
  }
  const parser = new BounceParser();
  let unreadable = false;
  const handle = async (file: string): Promise<string> => {
    let raw: Buffer;
    try {
      raw = await readMessage(file, DEFAULT_MAX_BYTES);
    } catch (err) {
      unreadable = true;
      process.stderr.write(`tern bounce parse: cannot read ${file}: ${(err as Error).message}\n`);
      return JSON.stringify({ file, kind: 'unknown', recipients: [], feedback: null, attribution: null });
    }
    const report = classifyReport(await parser.parse(raw), rules);
    const attribution = codec
      ? attributeReport(report, codec, { onRejected: (candidate, why) => process.stderr.write(`tern bounce parse: ${file}: ignored a ${why} VERP address or ref: ${candidate}\n`) })
      : null;
    return JSON.stringify(reportLine(file, report, attribution));
  };
  // a few messages in flight, lines written in input order
  const inFlight: Array<Promise<string>> = [];
  let next = 0;
  while (next < positionals.length || inFlight.length) {
    while (next < positionals.length && inFlight.length < 8) inFlight.push(handle(positionals[next++]!));
    process.stdout.write((await inFlight.shift()!) + '\n');
  }
  await parser.close();
  process.exitCode = unreadable ? 1 : 0;
}

const [command, ...args] = process.argv.slice(2);
switch (command) {
  case 'start':
    await start(args);
    break;
  case 'dkim':
    dkim(args);
    break;
  case 'shaping':
    await shaping(args);
    break;
  case 'reload':
    await reload(args);
    break;
  case 'warmup':
    await warmup(args);
    break;
  case 'queue':
    process.exitCode = await queueCommand(args, configOrExit);
    break;
  case 'bounce':
    await bounce(args);
    break;
  default:
    fail(USAGE);
}
