/** The `tern` command as an operator runs it. */
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { ROOT, tempDir } from './support/node.js';

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
