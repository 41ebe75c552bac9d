/**
 * Key files a node keeps in `<data_dir>/keys`: `<name>.key` is the current key (it signs or seals), every
 * `<name>.old*.key` an older one kept so what it made still verifies or opens (rotation: rename the current
 * file to `<name>.old.key` and restart). Keys are 32 random bytes written as 64 hex characters.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

/** Reads a 32-byte key written as hex; `what` names it in the error ("VERP key", "tracking key"). */
export function readHexKeyFile(file: string, what: string): Buffer {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8').trim();
  } catch (err) {
    throw new Error(`${what} ${file} cannot be read: ${(err as Error).message}`);
  }
  if (!/^[0-9a-f]{64}$/i.test(text)) throw new Error(`${what} ${file} must hold 64 hexadecimal characters (32 bytes); make one with: openssl rand -hex 32`);
  return Buffer.from(text, 'hex');
}

/**
 * The current key, then the older ones in name order. With `create`, a missing current key is made first
 * (mode 0600, in a 0700 directory; two processes starting together end up with the same file). Null when
 * there is no current key and `create` is false.
 */
export function keyRing(dataDir: string, name: string, opts: { create: boolean; read: (file: string) => Buffer }): Buffer[] | null {
  const dir = path.join(dataDir, 'keys');
  const current = path.join(dir, `${name}.key`);
  if (opts.create) {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    try {
      fs.writeFileSync(current, crypto.randomBytes(32).toString('hex') + '\n', { flag: 'wx', mode: 0o600 });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
  } else if (!fs.existsSync(current)) return null;
  return [opts.read(current), ...olderKeys(dataDir, name, opts.read)];
}

/** The `<name>.old*.key` files of `<dataDir>/keys`, in name order (none when the directory does not exist). */
export function olderKeys(dataDir: string, name: string, read: (file: string) => Buffer): Buffer[] {
  const dir = path.join(dataDir, 'keys');
  if (!fs.existsSync(dir)) return [];
  const old = new RegExp(`^${name.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\.old.*\\.key$`);
  return fs
    .readdirSync(dir)
    .filter((f) => old.test(f))
    .sort()
    .map((f) => read(path.join(dir, f)));
}
