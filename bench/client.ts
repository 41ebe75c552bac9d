/**
 * The outbound SMTP client's own cost: Tern's client (src/mta/smtp-client.ts) against nodemailer's
 * SMTPConnection (what Tern used before), each sending the same 5 KB messages to the bench sink over C
 * connections in this process. Prints one JSON line per client with messages/s and the CPU per message of
 * this process (client and sink together; the sink's share is the same for both).
 *
 *   npx tsx bench/client.ts [--count 20000] [--connections 20] [--size 5120]
 */
import { parseArgs } from 'node:util';
import SMTPConnection from 'nodemailer/lib/smtp-connection';
import { startSink } from './sink.js';
import { machine } from './relay.js';
import { OutboundConnection } from '../src/mta/smtp-client.js';

const { values } = parseArgs({ options: { count: { type: 'string', default: '20000' }, connections: { type: 'string', default: '20' }, size: { type: 'string', default: '5120' } } });
const count = Number(values.count);
const connections = Number(values.connections);
const line = 'Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor \r\n';
const body = Buffer.from(`From: <sender@bench.tern.test>\r\nSubject: client bench\r\n\r\n${line.repeat(Math.ceil(Number(values.size) / line.length))}`, 'latin1');

const sink = await startSink({});

type Send = (to: string) => Promise<void>;
const clients: Record<string, () => Promise<{ send: Send; close(): void }>> = {
  tern: async () => {
    const conn = await OutboundConnection.open({ address: '127.0.0.1', port: sink.port, servername: 'sink.tern.test', ehlo: 'bench.tern.test', tls: 'none', connectTimeoutMs: 5000, commandTimeoutMs: 30_000, dataTimeoutMs: 30_000 });
    return { send: async (to) => void (await conn.send('sender@bench.tern.test', [to], body, { utf8: false, size: body.length })), close: () => conn.quit() };
  },
  nodemailer: async () => {
    const conn = new SMTPConnection({ host: '127.0.0.1', port: sink.port, name: 'bench.tern.test', ignoreTLS: true, logger: false } as never);
    await new Promise<void>((resolve, reject) => {
      conn.once('error', reject);
      conn.connect(() => resolve());
    });
    const send: Send = (to) => new Promise((resolve, reject) => conn.send({ from: 'sender@bench.tern.test', to: [to], size: body.length, use8BitMime: true } as never, body, (err) => (err ? reject(err) : resolve())));
    return { send, close: () => conn.quit() };
  },
};

for (const [name, open] of Object.entries(clients)) {
  const before = sink.accepted;
  let next = 0;
  const cpu = process.cpuUsage();
  const started = performance.now();
  await Promise.all(
    Array.from({ length: connections }, async () => {
      const c = await open();
      while (next < count) await c.send(`user${next++}@sink.tern.test`);
      c.close();
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  const used = process.cpuUsage(cpu);
  if (sink.accepted - before !== count) throw new Error(`${name}: the sink accepted ${sink.accepted - before} of ${count}`);
  console.log(JSON.stringify({ scenario: 'client', client: name, machine: machine(), count, connections, size: body.length, msgs_per_s: Math.round(count / seconds), cpu_us_per_msg: Math.round((used.user + used.system) / count) }));
}
await sink.close();
