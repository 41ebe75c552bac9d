/**
 * The file a worker thread starts from.
 *
 * Tern runs from its TypeScript sources (tsx). A thread that registered tsx for itself would carry its own
 * loader: a module-hooks thread and a second compiler per thread, ≈ 28 MB of memory each (two preparation
 * threads: 72 MB instead of 15 MB for the same code as plain JavaScript). So the thread's module and what it
 * imports are bundled once, at start, into one plain ES module (esbuild, the compiler tsx itself uses), and
 * the thread starts from that. Built JavaScript (a `.js` sibling) is used as it is.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

import { buildSync } from 'esbuild';

const built = new Map<string, URL>();

/**
 * `entry`: the thread module's URL (its `.ts` source while running from sources). `fallback`: where to start
 * when no bundle can be written (a shared temporary directory that is not ours): a boot module that registers
 * tsx in the thread.
 */
export function threadEntry(entry: URL, fallback: URL): URL {
  if (!entry.pathname.endsWith('.ts')) return entry;
  const cached = built.get(entry.href);
  if (cached && fs.existsSync(cached)) return cached; // (a temporary directory cleaner may have taken it since)
  const dir = path.join(os.tmpdir(), `tern-threads-${process.getuid?.() ?? 'user'}`);
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const st = fs.lstatSync(dir);
  // someone else's directory (or a link to one) could hold code of theirs: start the slow, safe way
  if (!st.isDirectory() || (process.getuid && st.uid !== process.getuid()) || (st.mode & 0o022) !== 0) return fallback;
  let result;
  try {
    result = buildSync({
      entryPoints: [fileURLToPath(entry)],
      bundle: true,
      platform: 'node',
      format: 'esm',
      target: 'node20',
      write: false,
      logLevel: 'silent',
      // CommonJS dependencies inside an ES module bundle still call require()
      banner: { js: "import { createRequire as __ternCreateRequire } from 'node:module'; const require = __ternCreateRequire(import.meta.url);" },
    });
  } catch {
    return fallback; // no esbuild binary for this platform: the thread loads tsx itself
  }
  const code = result.outputFiles[0]!.contents;
  const hash = crypto.createHash('sha256').update(code).digest('hex').slice(0, 16);
  const file = path.join(dir, `${path.basename(entry.pathname, '.ts')}-${hash}.mjs`);
  // always written (under a unique name, then renamed over): two nodes starting at once never see half a
  // file, and nothing already there is trusted
  const tmp = `${file}.${process.pid}.${crypto.randomBytes(4).toString('hex')}`;
  fs.writeFileSync(tmp, code, { mode: 0o600 });
  fs.renameSync(tmp, file);
  const url = pathToFileURL(file);
  built.set(entry.href, url);
  return url;
}
