/**
 * The `shaping` scenario: what shaping costs. 1,000 distinct recipient domains, spread over 10 MX sets
 * (resolved through a DNS server for *.tern.test), relayed twice through the same node configuration:
 * once with an empty shaping file (built-in limits only) and once with provider blocks matching every MX set
 * (connections, messages per connection, recipients per transaction, non-binding message and connection
 * rates). The queue topology is the same in both runs, so the difference is the cost of the rules.
 *
 *   npx tsx bench/shaping.ts [--count 20000] [--domains 1000]
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import YAML from 'yaml';
import { startSink } from './sink.js';
import { runLoad } from './loadgen.js';
import { machine, startTern } from './relay.js';
import { startDnsServer, type ZoneRecord } from '../test/support/dns-server.js';

async function run(label: string, shaping: object, opts: { count: number; domains: number; sinkPort: number; dns: string; dir: string }) {
  const dir = path.join(opts.dir, label);
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, 'rules.yaml');
  fs.writeFileSync(file, YAML.stringify(shaping));
  const sink = await startSink();
  const tern = await startTern({
    sinkPort: sink.port,
    dkim: true,
    logLevel: 'warn',
    dir,
    extra: { dns: { servers: [opts.dns] }, delivery: { smtp_port: sink.port }, shaping: { file }, routes: [] },
  });
  try {
    const started = Date.now();
    const load = await runLoad({
      host: '127.0.0.1',
      port: tern.port,
      count: opts.count,
      size: 5120,
      connections: 50,
      auth: { user: 'bench', pass: 'bench-password' },
      recipients: (n) => [`user${n}@d${n % opts.domains}.tern.test`],
      idPrefix: label,
    });
    await sink.waitFor(() => sink.accepted >= load.accepted, 600_000);
    const seconds = (Date.now() - started) / 1000;
    return { delivered_rate: Math.round(load.accepted / seconds), accepted: load.accepted, max_open_connections: sink.maxOpenConnections };
  } finally {
    await tern.stop();
    await sink.close();
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { count: { type: 'string', default: '20000' }, domains: { type: 'string', default: '1000' } } });
  const count = Number(values.count);
  const domains = Number(values.domains);
  const records: ZoneRecord[] = [];
  for (let m = 0; m < 10; m++) records.push({ type: 'A', name: `mx.p${m}.tern.test`, address: '127.0.0.1' });
  for (let d = 0; d < domains; d++) records.push({ type: 'MX', name: `d${d}.tern.test`, priority: 10, exchange: `mx.p${d % 10}.tern.test` });
  const dns = await startDnsServer({ records, zones: ['tern.test'] });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tern-shaping-bench-'));
  const rules = {
    default: { connections: 10 },
    providers: Array.from({ length: 10 }, (_, m) => ({
      name: `p${m}`,
      match: [`.p${m}.tern.test`],
      connections: 10,
      messages_per_connection: 200,
      recipients_per_transaction: 50,
      rate: '600000/min',
      connection_rate: '60000/min',
    })),
  };
  try {
    const plain = await run('no-rules', { default: { connections: 10 } }, { count, domains, sinkPort: 0, dns: dns.address, dir });
    const shaped = await run('rules', rules, { count, domains, sinkPort: 0, dns: dns.address, dir });
    process.stdout.write(
      JSON.stringify({
        scenario: 'shaping',
        machine: machine(),
        params: { count, domains, mx_sets: 10, size: 5120, dkim: 'rsa-2048' },
        without_rules: plain,
        with_rules: shaped,
        cost_percent: Math.round((1 - shaped.delivered_rate / plain.delivered_rate) * 1000) / 10,
      }) + '\n',
    );
  } finally {
    await dns.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
