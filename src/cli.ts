/** `tern` command line: start a node, manage DKIM keys. */
import path from 'node:path';
import { parseArgs } from 'node:util';
import { ConfigError, loadConfig } from './core/config.js';
import { generateDkimKey } from './mta/dkim.js';
import { TernNode } from './node.js';

const DEFAULT_CONFIG = 'config/tern.yaml';

const USAGE = `usage:
  tern start [--config FILE]          run a node (default config: ${DEFAULT_CONFIG})
  tern dkim keygen --domain D --selector S [--type rsa|ed25519] [--bits 2048] [--dir DIR]
                                      write a DKIM key and print the DNS record to publish`;

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
    `Tern is running: SMTP submission on ${config.submission.host}:${node.ports.submission}, control (metrics, health) on http://${config.control.host}:${node.ports.control}\n`,
  );
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

const [command, ...args] = process.argv.slice(2);
switch (command) {
  case 'start':
    await start(args);
    break;
  case 'dkim':
    dkim(args);
    break;
  default:
    fail(USAGE);
}
