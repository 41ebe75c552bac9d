/**
 * The operator's first-login secret. With neither `control.admin_token` nor TERN_ADMIN_TOKEN set, a fresh node
 * would have a control API nobody may use: it makes one random token, keeps it (0600) in data_dir and prints
 * it at start. The `tern` commands read the same file when the config names no token.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

const FILE = 'bootstrap-operator-token';

export function operatorTokenFile(dataDir: string): string {
  return path.join(dataDir, FILE);
}

/** The token kept in data_dir, or null when the node never made one. */
export function readBootstrapOperatorToken(dataDir: string): string | null {
  try {
    const token = fs.readFileSync(operatorTokenFile(dataDir), 'utf8').trim();
    return token.length >= 16 ? token : null;
  } catch {
    return null;
  }
}

/** The kept token, made now (and kept, mode 0600) when there is none. */
export function bootstrapOperatorToken(dataDir: string): string {
  const existing = readBootstrapOperatorToken(dataDir);
  if (existing) return existing;
  const token = `op-${crypto.randomBytes(24).toString('base64url')}`; // not "tern_…", which is how API keys look
  fs.mkdirSync(dataDir, { recursive: true });
  fs.writeFileSync(operatorTokenFile(dataDir), token + '\n', { mode: 0o600 });
  return token;
}
