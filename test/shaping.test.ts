/** Shaping applied to real deliveries: connection caps, per-connection message caps, rates, TLS policy. */
import fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import YAML from 'yaml';
import { runLoad } from '../bench/loadgen.js';
import { startSink, type Sink } from '../bench/sink.js';
import { startDnsServer, type DnsServer } from './support/dns-server.js';
import { shapingFile, startTestNode } from './support/node.js';
import type { TernNode } from '../src/node.js';

const TOKEN = 'operator-token-for-tests-0123456789';
let sinks: Record<'limited' | 'mpc' | 'tlsreq' | 'rated' | 'prov', Sink>;
let dnsServer: DnsServer;
let node: TernNode;
let rulesFile: string;
const rules = {
  providers: [{ name: 'testprov', match: ['.prov.tern.test'], connections: 3, messages_per_connection: 7 }],
  domains: {
    'limited.tern.test': { connections: 2 },
    'mpc.tern.test': { messages_per_connection: 3 },
    'tlsreq.tern.test': { tls: 'required' },
    'rated.tern.test': { rate: '20/s' },
  },
};

beforeAll(async () => {
  sinks = { limited: await startSink(), mpc: await startSink(), tlsreq: await startSink(), rated: await startSink(), prov: await startSink() };
  dnsServer = await startDnsServer({
    records: [
      { type: 'MX', name: 'customer.tern.test', priority: 10, exchange: 'mx1.prov.tern.test' },
      { type: 'A', name: 'mx1.prov.tern.test', address: '127.0.0.1' },
    ],
    zones: ['tern.test'],
  });
  rulesFile = shapingFile(rules);
  node = await startTestNode({
    dns: { servers: [dnsServer.address] },
    delivery: { smtp_port: sinks.prov.port },
    routes: (['limited', 'mpc', 'tlsreq', 'rated'] as const).map((d) => ({ domain: `${d}.tern.test`, host: '127.0.0.1', port: sinks[d].port })),
    shaping: { file: rulesFile },
    control: { admin_token: TOKEN },
    retry: { schedule: ['1h'] },
  });
});

afterAll(async () => {
  await node?.stop();
  for (const s of Object.values(sinks ?? {})) await s.close();
  await dnsServer?.close();
});

const inject = (domain: string, count: number, prefix: string) =>
  runLoad({ host: '127.0.0.1', port: node.ports.submission, count, connections: 10, size: 600, auth: { user: 'tenant1', pass: 'secret-1' }, recipients: (n) => [`u${n}@${domain}`], idPrefix: prefix });

const explain = async (domain: string, token: string | null = TOKEN) => {
  const res = await fetch(`http://127.0.0.1:${node.ports.control}/api/v1/shaping/explain?domain=${domain}`, { headers: token ? { authorization: `Bearer ${token}` } : {} });
  return { status: res.status, body: (await res.json()) as { provider: string | null; site: string; settings: Record<string, { value: unknown; from: string }> } };
};

describe('limits per source → site', () => {
  it('never opens more than 2 connections to a site limited to 2', async () => {
    const load = await inject('limited.tern.test', 60, 'lim');
    await sinks.limited.waitFor(() => sinks.limited.accepted === load.accepted, 20_000);
    expect(load.accepted).toBe(60);
    expect(sinks.limited.maxOpenConnections).toBeLessThanOrEqual(2);
    expect(sinks.limited.maxOpenConnections).toBeGreaterThanOrEqual(1);
  });

  it('reconnects after messages_per_connection transactions', async () => {
    await inject('mpc.tern.test', 12, 'mpc');
    await sinks.mpc.waitFor(() => sinks.mpc.accepted === 12, 20_000);
    expect(Math.max(...sinks.mpc.connections.map((c) => c.messages))).toBeLessThanOrEqual(3);
    expect(sinks.mpc.connections.filter((c) => c.messages > 0).length).toBeGreaterThanOrEqual(4);
  });

  it('spaces sends to a rated site: at 20/s, 30 messages take about 29 intervals of 50 ms', async () => {
    await inject('rated.tern.test', 30, 'rated');
    await sinks.rated.waitFor(() => sinks.rated.accepted === 30, 20_000);
    const times = sinks.rated.messages.map((m) => m.receivedAt).sort((a, b) => a - b);
    // the limiter spaces the starts of transactions exactly (see the GCRA unit test); arrivals at the sink
    // add transit time that varies on a busy machine, hence 80 % of 1,450 ms. Unlimited, 30 messages over
    // 20 connections arrive within ~100 ms.
    expect(times.at(-1)! - times[0]!).toBeGreaterThanOrEqual(0.8 * 29 * 50);
  });

  it('defers instead of sending in clear when the domain requires TLS and the sink has no STARTTLS', async () => {
    await inject('tlsreq.tern.test', 1, 'tlsreq');
    const until = Date.now() + 10_000;
    let ev;
    while (!(ev = node.store.events(0, 1e6).find((e) => e.type !== 'accepted' && String(e.rcpt).endsWith('@tlsreq.tern.test')))) {
      if (Date.now() > until) throw new Error('no result for the TLS-required domain');
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(ev.type).toBe('deferred');
    expect(sinks.tlsreq.accepted).toBe(0);
  });

  it('shapes a domain by the provider its MX hosts belong to', async () => {
    const { status, body } = await explain('customer.tern.test');
    expect(status).toBe(200);
    expect(body.provider).toBe('testprov');
    expect(body.site).toBe('mx:mx1.prov.tern.test');
    expect(body.settings.connections).toEqual({ value: 3, from: 'provider testprov' });
    expect(body.settings.messages_per_connection).toEqual({ value: 7, from: 'provider testprov' });
    await inject('customer.tern.test', 20, 'prov');
    await sinks.prov.waitFor(() => sinks.prov.accepted === 20, 20_000);
    expect(sinks.prov.maxOpenConnections).toBeLessThanOrEqual(3);
    expect(Math.max(...sinks.prov.connections.map((c) => c.messages))).toBeLessThanOrEqual(7);
  });
});

describe('explain and reload over HTTP', () => {
  it('refuses admin routes without the operator token', async () => {
    expect((await explain('limited.tern.test', null)).status).toBe(401);
    expect((await explain('limited.tern.test', 'wrong-token-wrong-token-wrong')).status).toBe(401);
  });

  it('shows a route domain shaped by its domains block', async () => {
    const { body } = await explain('limited.tern.test');
    expect(body.site).toBe(`route:127.0.0.1:${sinks.limited.port}`);
    expect(body.settings.connections).toEqual({ value: 2, from: 'domains.limited.tern.test' });
    expect(body.settings.rate).toEqual({ value: null, from: 'default' });
  });

  it('applies an edited file on reload, and keeps the rules in force when the new file is invalid', async () => {
    const doc = YAML.parse(fs.readFileSync(rulesFile, 'utf8'));
    doc.domains['limited.tern.test'].connections = 1;
    fs.writeFileSync(rulesFile, YAML.stringify(doc));
    const ok = await fetch(`http://127.0.0.1:${node.ports.control}/api/v1/reload`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}` } });
    expect(ok.status).toBe(200);
    expect((await explain('limited.tern.test')).body.settings.connections).toEqual({ value: 1, from: 'domains.limited.tern.test' });
    // queued mail still flows under the new limit
    const before = sinks.limited.accepted;
    const open = sinks.limited.maxOpenConnections;
    await inject('limited.tern.test', 10, 'lim2');
    await sinks.limited.waitFor(() => sinks.limited.accepted === before + 10, 20_000);
    expect(sinks.limited.maxOpenConnections).toBe(open); // no more than the earlier peak of 2

    doc.domains['limited.tern.test'].rate = '5/fortnight';
    fs.writeFileSync(rulesFile, YAML.stringify(doc));
    const bad = await fetch(`http://127.0.0.1:${node.ports.control}/api/v1/reload`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}` } });
    expect(bad.status).toBe(422);
    expect(JSON.stringify(await bad.json())).toMatch(/domains\.limited\.tern\.test\.rate: \\"5\/fortnight\\" is not a rate/);
    expect((await explain('limited.tern.test')).body.settings.connections!.value).toBe(1);
  });
});
