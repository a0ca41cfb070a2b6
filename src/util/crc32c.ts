/**
 * CRC32C (Castagnoli) checksums, computed by the native addon in native/.
 *
 * There is deliberately no JavaScript fallback: a pure-JS CRC is far slower
 * and would silently degrade every checksummed write, so a missing addon is
 * a hard error instead.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

interface NativeCrc32c {
  crc32c(data: Uint8Array, seed?: number): number;
  crc32cImplementation: string;
}

const PACKAGE_NAME = 'lsnfs';
const ADDON_RELATIVE_PATH = path.join('native', 'build', 'Release', 'lsnfs_native.node');

/**
 * Finds the repository root by walking up from this file's directory, so the
 * addon is found whether this runs from dist/src/util or is moved/bundled.
 */
function findPackageRoot(startDir: string): string | undefined {
  let dir = startDir;
  for (;;) {
    const manifest = path.join(dir, 'package.json');
    try {
      const parsed: unknown = JSON.parse(fs.readFileSync(manifest, 'utf8'));
      if (
        typeof parsed === 'object' &&
        parsed !== null &&
        (parsed as { name?: unknown }).name === PACKAGE_NAME
      ) {
        return dir;
      }
    } catch {
      // No (readable, valid) package.json here; keep walking up.
    }
    const parent = path.dirname(dir);
    if (parent === dir) return undefined;
    dir = parent;
  }
}

function loadNative(): NativeCrc32c {
  const root = findPackageRoot(__dirname);
  const addonPath =
    root !== undefined
      ? path.join(root, ADDON_RELATIVE_PATH)
      : // Fallback to the layout dist/src/util/crc32c.js -> <root>/native/...
        path.join(__dirname, '..', '..', '..', ADDON_RELATIVE_PATH);

  if (!fs.existsSync(addonPath)) {
    throw new Error(
      `lsnfs native addon is not built (expected ${addonPath}); run \`npm run build\``,
    );
  }
  let mod: Partial<NativeCrc32c>;
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    mod = require(addonPath) as Partial<NativeCrc32c>;
  } catch (err) {
    throw new Error(
      `lsnfs native addon at ${addonPath} failed to load (stale or broken build?); ` +
        `run \`npm run build\`: ${(err as Error).message}`,
      { cause: err },
    );
  }
  if (typeof mod.crc32c !== 'function' || typeof mod.crc32cImplementation !== 'string') {
    throw new Error(
      `lsnfs native addon at ${addonPath} does not export crc32c; it is out of date, run \`npm run build\``,
    );
  }
  return mod as NativeCrc32c;
}

const native = loadNative();

/** Which native code path was selected at load time: "sse4.2" or "table". */
export const crc32cImplementation: string = native.crc32cImplementation;

/**
 * CRC32C of `data`. Pass a previous result as `seed` to continue a running
 * checksum: crc32c(b, crc32c(a)) === crc32c(concat(a, b)).
 * Throws TypeError if `data` is not a Uint8Array (Buffer included) or `seed`
 * is not an integer in 0..2^32-1.
 */
export function crc32c(data: Uint8Array, seed?: number): number {
  return seed === undefined ? native.crc32c(data) : native.crc32c(data, seed);
}
