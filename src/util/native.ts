/**
 * The native addon (native/, built by `npm run build`): found by walking up
 * from this file to the package root, so it loads from dist/ and from src/.
 *
 * There is no JavaScript fallback for anything in it: a missing or stale
 * addon is a hard error naming the fix, never a silent slow path.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

const ADDON_RELATIVE_PATH = path.join('native', 'build', 'Release', 'lsnfs_native.node');

let addon: Record<string, unknown> | undefined;

function loadAddon(): Record<string, unknown> {
  for (let dir = __dirname; ; dir = path.dirname(dir)) {
    const candidate = path.join(dir, ADDON_RELATIVE_PATH);
    if (fs.existsSync(path.join(dir, 'package.json')) && fs.existsSync(candidate)) {
      try {
        // eslint-disable-next-line @typescript-eslint/no-require-imports
        return require(candidate) as Record<string, unknown>;
      } catch (error) {
        throw new Error(`lsnfs native addon at ${candidate} failed to load (stale or broken build?); run \`npm run build\`: ${(error as Error).message}`, { cause: error });
      }
    }
    if (path.dirname(dir) === dir) throw new Error('lsnfs native addon is not built (native/build/Release/lsnfs_native.node); run `npm run build`');
  }
}

/** The addon's exports, checked to include `names` (one addon, loaded once). */
export function nativeAddon<T>(names: string[]): T {
  addon ??= loadAddon();
  const missing = names.filter((name) => addon![name] === undefined);
  if (missing.length > 0) throw new Error(`lsnfs native addon lacks ${missing.join(', ')}; it is out of date, run \`npm run build\``);
  return addon as T;
}
