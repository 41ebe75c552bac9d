/** Small value types written in config as strings: durations ("5m") and sizes ("25MB"). */

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
const SIZE_UNITS: Record<string, number> = { b: 1, kb: 1024, k: 1024, mb: 1024 ** 2, m: 1024 ** 2, gb: 1024 ** 3, g: 1024 ** 3 };

export const DURATION_PATTERN = '^\\s*\\d+(\\.\\d+)?\\s*(ms|s|m|h|d)\\s*$';
export const SIZE_PATTERN = '^\\s*\\d+(\\.\\d+)?\\s*([kKmMgG][bB]?|[bB])?\\s*$';

/** Parses "500ms", "30s", "5m", "1h", "3d" into milliseconds. */
export function parseDuration(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$/.exec(text);
  if (!m) throw new Error(`"${text}" is not a duration; write it like "30s", "5m", "1h" or "3d"`);
  return Math.round(Number(m[1]) * DURATION_UNITS[m[2]!]!);
}

/** Parses "25MB", "512kb", "1048576" into bytes. */
export function parseSize(text: string | number): number {
  if (typeof text === 'number') return text;
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kKmMgG][bB]?|[bB])?\s*$/.exec(text);
  if (!m) throw new Error(`"${text}" is not a size; write it like "25MB" or "512KB"`);
  return Math.round(Number(m[1]) * SIZE_UNITS[(m[2] ?? 'b').toLowerCase()]!);
}
