/** The `tern` command as an operator runs it. */
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { freePort, ROOT, shapingFile, spawnNode, tempDir, testConfigDoc, writeYaml } from './support/node.js';
import { startDnsServer } from './support/dns-server.js';
import YAML from 'yaml';

const run = promisify(execFile);
const tern = (...args: string[]) =>
  run(process.execPath, [path.join(ROOT, 'bin/tern.js'), ...args], { cwd: ROOT }).then(
    (r) => ({ code: 0, ...r }),
    (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
  );

describe('tern start', () => {
  it('refuses an invalid config, naming the key, and does not start', async () => {
    const dir = tempDir();
    const file = path.join(dir, 'bad.yaml');
    fs.writeFileSync(file, 'listeners:\n  submission:\n    port: 99999\nretry:\n  max_age: soon\n');
    const r = await tern('start', '--config', file);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/config: listeners\.submission\.port: 99999 is invalid/);
    expect(r.stderr).toMatch(/config: retry\.max_age: "soon" is not a duration/);
    expect(r.stderr).toMatch(/not started/);
  });

  it('says so when the config file is missing', async () => {
    const r = await tern('start', '--config', '/nonexistent/tern.yaml');
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/cannot read \/nonexistent\/tern\.yaml/);
  });
});

describe('tern dkim keygen', () => {
  it('writes an RSA key readable only by its owner and prints the TXT record', async () => {
    const dir = tempDir();
    const r = await tern('dkim', 'keygen', '--domain', 'example.com', '--selector', 's2026', '--dir', dir);
    expect(r.code).toBe(0);
    const m = /s2026\._domainkey\.example\.com\. IN TXT "v=DKIM1; k=rsa; p=([A-Za-z0-9+/=]+)"/.exec(r.stdout);
    expect(m).not.toBeNull();
    const keyFile = path.join(dir, 'example.com.s2026.rsa.pem');
    expect(fs.statSync(keyFile).mode & 0o777).toBe(0o600);
    const pub = crypto.createPublicKey({ key: Buffer.from(m![1]!, 'base64'), format: 'der', type: 'spki' });
    expect(pub.asymmetricKeyDetails?.modulusLength).toBe(2048);
    // the printed record is the public half of the written key
    const priv = crypto.createPrivateKey(fs.readFileSync(keyFile));
    const sig = crypto.sign('sha256', Buffer.from('x'), priv);
    expect(crypto.verify('sha256', Buffer.from('x'), pub, sig)).toBe(true);
    // and it never overwrites an existing key
    const again = await tern('dkim', 'keygen', '--domain', 'example.com', '--selector', 's2026', '--dir', dir);
    expect(again.code).toBe(2);
    expect(again.stderr).toMatch(/EEXIST|exists/);
  });

  it('writes an Ed25519 key with a 32-byte public key record', async () => {
    const dir = tempDir();
    const r = await tern('dkim', 'keygen', '--domain', 'example.com', '--selector', 'ed', '--type', 'ed25519', '--dir', dir);
    const m = /k=ed25519; p=([A-Za-z0-9+/=]+)"/.exec(r.stdout);
    expect(Buffer.from(m![1]!, 'base64')).toHaveLength(32);
  });
});

describe('tern shaping explain and reload', () => {
  it('prints the merged settings for a domain, resolving its MX through the configured DNS server, with each origin', async () => {
    const dns = await startDnsServer({ records: [{ type: 'MX', name: 'shop.tern.test', priority: 5, exchange: 'in1.bigmail.tern.test' }, { type: 'A', name: 'in1.bigmail.tern.test', address: '127.0.0.1' }], zones: ['tern.test'] });
    try {
      const dir = tempDir();
      const rules = shapingFile({ providers: [{ name: 'bigmail', match: ['.bigmail.tern.test'], connections: 4, sources: { fresh: { rate: '100/hour' } } }] });
      const config = writeYaml(path.join(dir, 'tern.yaml'), testConfigDoc(path.join(dir, 'data'), {
        dns: { servers: [dns.address] },
        shaping: { file: rules },
        pools: { default: { sources: [{ name: 'warm', address: '127.0.0.1', ehlo: 'warm.tern.test' }, { name: 'fresh', address: '127.0.0.2', ehlo: 'fresh.tern.test' }] } },
      }));
      const text = await tern('shaping', 'explain', 'shop.tern.test', '--source', 'fresh', '--config', config);
      expect(text.code).toBe(0);
      expect(text.stdout).toMatch(/shop\.tern\.test from source fresh: site mx:in1\.bigmail\.tern\.test, provider bigmail/);
      expect(text.stdout).toMatch(/connections\s+4\s+from provider bigmail\n/);
      expect(text.stdout).toMatch(/rate\s+100\/hour\s+from provider bigmail sources\.fresh\n/);
      expect(text.stdout).toMatch(/tls\s+opportunistic\s+from default\n/);
      const json = await tern('shaping', 'explain', 'shop.tern.test', '--config', config, '--json');
      expect(JSON.parse(json.stdout)).toMatchObject({ source: 'warm', provider: 'bigmail', settings: { rate: { value: null, from: 'default' } } });
      const unknown = await tern('shaping', 'explain', 'shop.tern.test', '--source', 'nope', '--config', config);
      expect(unknown.code).toBe(2);
      expect(unknown.stderr).toMatch(/no egress source is named "nope"/);
    } finally {
      await dns.close();
    }
  });

  it('re-reads the shaping file on SIGHUP and on `tern reload`', async () => {
    const dir = tempDir();
    const rules = shapingFile({ domains: { 'hup.tern.test': { connections: 5 } } });
    const ports = { submission: await freePort(), control: await freePort() };
    const token = 'cli-test-operator-token-0123456789';
    const config = writeYaml(path.join(dir, 'tern.yaml'), testConfigDoc(path.join(dir, 'data'), {
      listeners: { submission: { port: ports.submission }, control: { port: ports.control } },
      shaping: { file: rules },
      control: { admin_token: token },
      routes: [{ domain: 'hup.tern.test', host: '127.0.0.1', port: 9 }],
    }));
    const child = await spawnNode(config, ports);
    const connectionsNow = async () => {
      const res = await fetch(`http://127.0.0.1:${ports.control}/api/v1/shaping/explain?domain=hup.tern.test`, { headers: { authorization: `Bearer ${token}` } });
      return ((await res.json()) as { settings: { connections: { value: number } } }).settings.connections.value;
    };
    const setConnections = (n: number) => {
      const doc = YAML.parse(fs.readFileSync(rules, 'utf8'));
      doc.domains['hup.tern.test'].connections = n;
      fs.writeFileSync(rules, YAML.stringify(doc));
    };
    try {
      expect(await connectionsNow()).toBe(5);
      setConnections(3);
      child.proc.kill('SIGHUP');
      const until = Date.now() + 10_000;
      while ((await connectionsNow()) !== 3) {
        if (Date.now() > until) throw new Error('SIGHUP did not reload the shaping file');
        await new Promise((r) => setTimeout(r, 100));
      }
      setConnections(7);
      const r = await tern('reload', '--config', config);
      expect(r.code).toBe(0);
      expect(await connectionsNow()).toBe(7);
    } finally {
      child.proc.kill('SIGTERM');
      await child.exited;
    }
  });
});
