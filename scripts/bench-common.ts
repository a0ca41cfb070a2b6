/** Small helpers shared by the benchmarks in scripts/. */

/** Progress and per-run figures go to stderr; stdout is kept for the report (--json). */
export function log(message: string): void {
  process.stderr.write(`${message}\n`);
}

export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

export const round1 = (value: number): number => Math.round(value * 10) / 10;
export const round2 = (value: number): number => Math.round(value * 100) / 100;
export const round3 = (value: number): number => Math.round(value * 1000) / 1000;

/** A commander argument parser for a positive integer option. */
export function positiveInt(what: string) {
  return (text: string): number => {
    const value = Number(text);
    if (!Number.isSafeInteger(value) || value < 1) throw new Error(`${what}: "${text}" is not a positive integer`);
    return value;
  };
}
