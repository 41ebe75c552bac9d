/**
 * The node's master key and what it protects at rest. Secrets the node must read back (DKIM private keys)
 * are sealed with AES-256-GCM; secrets it only has to recognise (SMTP passwords) are kept as keyed MACs
 * (HMAC-SHA256 under a key derived from the master key), so a copy of the data directory without the master
 * key reveals neither and cannot even be used to test guesses.
 *
 * The master key is 32 bytes from `TERN_MASTER_KEY` (hex or base64), else `<data_dir>/keys/master.key`
 * (hex, mode 0600, made on first start). Every sealed value and MAC names the key that made it (a key id),
 * so a key can be rotated: move the file to `keys/master.old.key` (any `keys/master.old*.key` still opens
 * and verifies), restart, and values are re-sealed or re-keyed as they are next used.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import { keyRing, olderKeys } from '../core/keyring.js';

const SEALED = /^v1:([0-9a-f]{8}):([A-Za-z0-9_-]+)$/;

export interface MasterKey {
  /** 8 hex characters naming the key (not derived in a way that reveals it) */
  id: string;
  key: Buffer;
}

/** A MAC of a secret under the master key, with the key that made it and its salt. */
export interface SecretMac {
  kid: string;
  salt: string;
  mac: string;
}

export class SecretsError extends Error {}

export function keyId(key: Buffer): string {
  return crypto.createHash('sha256').update('tern master key id\0').update(key).digest('hex').slice(0, 8);
}

/** Reads a 32-byte key written as hex or base64. */
export function parseMasterKey(text: string, where: string): Buffer {
  const t = text.trim();
  const key = /^[0-9a-fA-F]{64}$/.test(t) ? Buffer.from(t, 'hex') : /^[A-Za-z0-9+/_-]{43}=?$/.test(t) ? Buffer.from(t, 'base64') : null;
  if (!key || key.length !== 32) throw new SecretsError(`${where}: the master key must be 32 bytes written as 64 hex characters or base64 (make one with "openssl rand -hex 32")`);
  return key;
}

export class Secrets {
  readonly current: MasterKey;
  private readonly byId: Map<string, MasterKey>;
  private readonly subkeys = new Map<string, Buffer>();

  constructor(current: Buffer, old: Buffer[] = []) {
    this.current = { id: keyId(current), key: current };
    this.byId = new Map([this.current, ...old.map((k) => ({ id: keyId(k), key: k }))].map((k) => [k.id, k]));
  }

  /**
   * The master key from `TERN_MASTER_KEY`, else `<dataDir>/keys/master.key` (created 0600 when missing),
   * and the older keys kept for rotation.
   */
  static load(dataDir: string, env: NodeJS.ProcessEnv = process.env): Secrets {
    const read = (file: string) => parseMasterKey(fs.readFileSync(file, 'utf8'), file);
    const current = env.TERN_MASTER_KEY ? parseMasterKey(env.TERN_MASTER_KEY, 'TERN_MASTER_KEY') : keyRing(dataDir, 'master', { create: true, read })![0]!;
    const old = olderKeys(dataDir, 'master', read);
    return new Secrets(current, old);
  }

  /** A key for one purpose, derived from a master key (HKDF-SHA256), so no two uses share key material. */
  private subkey(k: MasterKey, purpose: string): Buffer {
    const id = `${k.id}:${purpose}`;
    let sub = this.subkeys.get(id);
    if (!sub) {
      sub = Buffer.from(crypto.hkdfSync('sha256', k.key, Buffer.alloc(0), `tern:${purpose}`, 32));
      this.subkeys.set(id, sub);
    }
    return sub;
  }

  private key(id: string): MasterKey {
    const k = this.byId.get(id);
    if (!k) throw new SecretsError(`a secret was sealed with master key ${id}, which this node does not have (keys: ${[...this.byId.keys()].join(', ')}); restore it as keys/master.old.key`);
    return k;
  }

  /**
   * Encrypts `plaintext` (AES-256-GCM, random 96-bit nonce). `context` (e.g. "dkim:acme:example.com:s1") is
   * authenticated with it: a sealed value copied to another record does not open there.
   */
  seal(plaintext: string | Buffer, context: string): string {
    const nonce = crypto.randomBytes(12);
    const cipher = crypto.createCipheriv('aes-256-gcm', this.subkey(this.current, 'seal'), nonce);
    cipher.setAAD(Buffer.from(context));
    const body = Buffer.concat([cipher.update(plaintext), cipher.final()]);
    return `v1:${this.current.id}:${Buffer.concat([nonce, body, cipher.getAuthTag()]).toString('base64url')}`;
  }

  /** Decrypts what seal() made for the same context; throws SecretsError when it was altered or moved. */
  open(sealed: string, context: string): Buffer {
    const m = SEALED.exec(sealed);
    if (!m) throw new SecretsError('not a sealed secret');
    const raw = Buffer.from(m[2]!, 'base64url');
    if (raw.length < 28) throw new SecretsError('sealed secret is truncated');
    const decipher = crypto.createDecipheriv('aes-256-gcm', this.subkey(this.key(m[1]!), 'seal'), raw.subarray(0, 12));
    decipher.setAAD(Buffer.from(context));
    decipher.setAuthTag(raw.subarray(raw.length - 16));
    try {
      return Buffer.concat([decipher.update(raw.subarray(12, raw.length - 16)), decipher.final()]);
    } catch {
      throw new SecretsError('sealed secret does not open: altered, or sealed for another record');
    }
  }

  /** True when a value made under key `kid` should be re-made under the current key. */
  isStale(kid: string): boolean {
    return kid !== this.current.id;
  }

  /** A salted MAC of `secret` for `purpose` under the current key. */
  mac(purpose: string, secret: string): SecretMac {
    const salt = crypto.randomBytes(16).toString('base64url');
    return { kid: this.current.id, salt, mac: this.macWith(this.current, purpose, salt, secret).toString('base64url') };
  }

  /** Checks `secret` against a stored MAC in constant time; false (never a throw) when its key is gone. */
  verifyMac(purpose: string, secret: string, stored: SecretMac): boolean {
    const k = this.byId.get(stored.kid);
    if (!k) return false;
    const expected = Buffer.from(stored.mac, 'base64url');
    const actual = this.macWith(k, purpose, stored.salt, secret);
    return expected.length === actual.length && crypto.timingSafeEqual(expected, actual);
  }

  private macWith(k: MasterKey, purpose: string, salt: string, secret: string): Buffer {
    return crypto.createHmac('sha256', this.subkey(k, `mac:${purpose}`)).update(salt).update('\0').update(secret).digest();
  }
}
