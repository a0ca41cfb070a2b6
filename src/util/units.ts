import { UserError } from './errors';

const SIZE_SUFFIX_BYTES: Record<string, number> = {
  '': 1, b: 1, k: 1024, kb: 1024, kib: 1024, m: 1024 ** 2, mb: 1024 ** 2, mib: 1024 ** 2,
  g: 1024 ** 3, gb: 1024 ** 3, gib: 1024 ** 3, t: 1024 ** 4, tb: 1024 ** 4, tib: 1024 ** 4,
};

/** Parses "512M", "4GiB", "1048576" into bytes (binary units). */
export function parseSizeBytes(text: string, what: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  const multiplier = match ? SIZE_SUFFIX_BYTES[match[2]!.toLowerCase()] : undefined;
  if (!match || multiplier === undefined) {
    throw new UserError(`${what}: "${text}" is not a size (examples: 512M, 4G, 1048576)`);
  }
  return Math.floor(Number(match[1]) * multiplier);
}

const DURATION_SUFFIX_MS: Record<string, number> = {
  ms: 1, s: 1000, m: 60_000, min: 60_000, h: 3_600_000, d: 86_400_000,
};

/** Parses "1h", "30m", "500ms", "0" into milliseconds. */
export function parseDurationMs(text: string, what: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/.exec(text);
  const multiplier = match ? (match[2] === '' ? 1000 : DURATION_SUFFIX_MS[match[2]!]) : undefined;
  if (!match || multiplier === undefined) {
    throw new UserError(`${what}: "${text}" is not a duration (examples: 500ms, 30s, 1h)`);
  }
  return Math.floor(Number(match[1]) * multiplier);
}

export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit++; }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
}
