/** The `tern` command as an operator runs it. */
import { execFile, spawn } from 'node:child_process';
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

describe('first start without an operator token', () => {
  it('makes one, prints it, and the tern commands use it', async () => {
    const dir = tempDir();
    const ports = { submission: await freePort(), control: await freePort() };
    const doc = testConfigDoc(path.join(dir, 'data'), { listeners: { submission: { port: ports.submission }, control: { port: ports.control } } });
    delete (doc as { control?: unknown }).control;
    const config = writeYaml(path.join(dir, 'tern.yaml'), doc);
    const child = await spawnNode(config, ports);
    try {
      const token = /operator token for the control API \(no control\.admin_token in config\): (\S+)/.exec(child.output())?.[1];
      expect(token, child.output()).toMatch(/^op-/);
      const res = await fetch(`http://127.0.0.1:${ports.control}/api/v1/tenants`, { headers: { authorization: `Bearer ${token}` } });
      expect(res.status).toBe(200);
      expect((await fetch(`http://127.0.0.1:${ports.control}/api/v1/tenants`, { headers: { authorization: 'Bearer wrong-token-wrong-token' } })).status).toBe(401);
      const r = await tern('queue', 'list', '--json', '--config', config);
      expect(r.code, r.stderr).toBe(0);
      expect(JSON.parse(r.stdout).totals).toBeDefined();
      expect(fs.statSync(path.join(dir, 'data', 'bootstrap-operator-token')).mode & 0o777).toBe(0o600);
    } finally {
      child.proc.kill('SIGTERM');
      await child.exited;
    }
  });
});

describe('tern bounce parse', () => {
  const FIXTURES = path.join(ROOT, 'test/fixtures/bounces');
  /** runs the command with `stdin` on its standard input */
  const parse = (args: string[], stdin = '') =>
    new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
      const child = spawn(process.execPath, [path.join(ROOT, 'bin/tern.js'), 'bounce', 'parse', ...args], { cwd: ROOT });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d) => (stdout += d));
      child.stderr.on('data', (d) => (stderr += d));
      child.on('close', (code) => resolve({ code, stdout, stderr }));
      child.stdin.end(stdin);
    });
  const configWithKey = (key: string | null) => {
    const dir = tempDir();
    const dataDir = path.join(dir, 'data');
    if (key) {
      fs.mkdirSync(path.join(dataDir, 'keys'), { recursive: true });
      fs.writeFileSync(path.join(dataDir, 'keys', 'verp.key'), key, { mode: 0o600 });
    }
    return { config: writeYaml(path.join(dir, 'tern.yaml'), testConfigDoc(dataDir)), dataDir };
  };
  // the key the fixtures' VERP addresses were made with (test/fixtures/bounces/README.md)
  const FIXTURE_KEY = Buffer.from('tern-bounce-fixtures-test-key-01').toString('hex');

  it('prints one JSON line per message, in input order, with stdin as "-", attributing by VERP and X-Tern-Ref', async () => {
    const { config } = configWithKey(FIXTURE_KEY);
    const files = ['postfix-dsn-userunknown.eml', 'arf-microsoft-jmrp.eml', '-', 'autoreply-rfc3834-en.eml', 'human-reply.eml', 'postfix-dsn-mixed.eml'];
    const r = await parse(['--config', config, ...files.map((f) => (f === '-' ? f : path.join(FIXTURES, f)))], fs.readFileSync(path.join(FIXTURES, 'exim-plain-userunknown.eml'), 'latin1'));
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const lines = r.stdout.trimEnd().split('\n').map((l) => JSON.parse(l));
    expect(lines.map((l) => [path.basename(l.file), l.kind])).toEqual([
      ['postfix-dsn-userunknown.eml', 'dsn'],
      ['arf-microsoft-jmrp.eml', 'arf'],
      ['-', 'dsn'],
      ['autoreply-rfc3834-en.eml', 'autoreply'],
      ['human-reply.eml', 'unknown'],
      ['postfix-dsn-mixed.eml', 'dsn'],
    ]);
    expect(lines[0]).toEqual({
      file: path.join(FIXTURES, 'postfix-dsn-userunknown.eml'),
      kind: 'dsn',
      recipients: [
        {
          address: 'nobody@example.net',
          action: 'failed',
          status: '5.1.1',
          reply_code: 550,
          diagnostic: '550 5.1.1 <nobody@example.net>: Recipient address rejected: User unknown in virtual mailbox table',
          remote_mta: 'mx.example.net',
          category: 'userunknown',
          hard: true,
        },
      ],
      feedback: null,
      attribution: { message_id: '0mi3k5q2a0001Qx-z', recipient: 1 },
    });
    expect(lines[1]).toMatchObject({ feedback: { type: 'abuse', user_agent: 'Microsoft Junk Mail Reporting Program', original_rcpt: 'reader.two@hotmail.com' }, attribution: { message_id: '0mi3k6000001zK7w-', recipient: 7 } });
    expect(lines[2]).toMatchObject({ recipients: [{ address: 'j.bloggs@example.co.uk', category: 'userunknown', hard: true }], attribution: { message_id: '0mi3k5q2a0002Qx-z', recipient: 0 } });
    expect(lines[3]).toMatchObject({ recipients: [{ category: 'vacation', hard: false }], feedback: null });
    expect(lines[4]).toEqual({ file: path.join(FIXTURES, 'human-reply.eml'), kind: 'unknown', recipients: [], feedback: null, attribution: null });
    expect(lines[5].recipients.map((x: { category: string }) => x.category)).toEqual(['blocked', 'mailboxfull']);
  });

  it('ignores a forged VERP address, saying so on stderr', async () => {
    const { config } = configWithKey(FIXTURE_KEY);
    const r = await parse(['--config', config, path.join(FIXTURES, 'forged-verp-dsn.eml')]);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ kind: 'dsn', attribution: null });
    expect(r.stderr).toMatch(/forged-verp-dsn\.eml: ignored a forged VERP address or ref: b-caazve25gmzaaaabimp3galblnbkswcsw7qfjcy@bounce\.sender\.example/);
  });

  it('still prints a line for a file it cannot read, and exits 1; without a VERP key it attributes nothing and makes no key', async () => {
    const { config, dataDir } = configWithKey(null);
    const r = await parse(['--config', config, '/nonexistent/bounce.eml', path.join(FIXTURES, 'postfix-dsn-userunknown.eml')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/cannot read \/nonexistent\/bounce\.eml/);
    const lines = r.stdout.trimEnd().split('\n').map((l) => JSON.parse(l));
    expect(lines[0]).toEqual({ file: '/nonexistent/bounce.eml', kind: 'unknown', recipients: [], feedback: null, attribution: null });
    expect(lines[1]).toMatchObject({ kind: 'dsn', attribution: null });
    expect(fs.existsSync(path.join(dataDir, 'keys'))).toBe(false);
  });

  it('uses the bounce rules named in the config', async () => {
    const { config } = configWithKey(null);
    const rules = path.join(path.dirname(config), 'rules.yaml');
    fs.writeFileSync(rules, 'include_shipped: true\nrules:\n  - name: mx-example-net\n    text: "virtual mailbox table"\n    category: filtered\n');
    const doc = YAML.parse(fs.readFileSync(config, 'utf8'));
    doc.bounce = { rules_file: 'rules.yaml' };
    writeYaml(config, doc);
    const r = await parse(['--config', config, path.join(FIXTURES, 'postfix-dsn-userunknown.eml')]);
    expect(JSON.parse(r.stdout).recipients[0]).toMatchObject({ category: 'filtered', hard: false });
    fs.writeFileSync(rules, 'rules:\n  - name: x\n    category: usrunknown\n');
    const bad = await parse(['--config', config, path.join(FIXTURES, 'postfix-dsn-userunknown.eml')]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/bounce-rules: rules\[0\]\.category: "usrunknown" is not a category/);
  });
});
