/** The `tern` commands' HTTP client for a running node's control listener (address and token from the config). */
import type { Config } from '../core/config.js';
import { readBootstrapOperatorToken } from './operator-token.js';

interface ApiError {
  error: { code: string; message: string };
}

/** Returns `api(method, path, body?)`, which resolves to the parsed JSON answer or throws a sentence naming `command`. */
export function controlClient(config: Config, command: string) {
  const host = config.control.host === '0.0.0.0' ? '127.0.0.1' : config.control.host;
  const base = `http://${host.includes(':') ? `[${host}]` : host}:${config.control.port}`;
  // the configured token, else the one a node made in data_dir at its first start
  const token = config.adminToken ?? readBootstrapOperatorToken(config.dataDir);
  return async (method: string, path: string, body?: unknown): Promise<unknown> => {
    if (!token) throw new Error(`${command}: set control.admin_token in the config or TERN_ADMIN_TOKEN in the environment`);
    let res: Response;
    try {
      res = await fetch(base + path, {
        method,
        headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
        body: body ? JSON.stringify(body) : undefined,
      });
    } catch (err) {
      throw new Error(`${command}: no node answers on ${base}: ${(err as Error).message}`);
    }
    const text = await res.text();
    let out: unknown;
    try {
      out = JSON.parse(text);
    } catch {
      throw new Error(`${command}: the node answered ${res.status} with something that is not JSON: ${text.slice(0, 200)}`);
    }
    if (!res.ok) throw new Error(`${command}: ${(out as ApiError).error?.message ?? text} (${res.status})`);
    return out;
  };
}
