/**
 * Where the engine (node-sqlite3-wasm's `node-sqlite3-wasm.js` and its `.wasm`) is on disk.
 * siblite evaluates that file itself (see file/load.ts), so a bundler cannot inline it: a
 * bundled app ships the two files next to the bundle (docs/bundling.md).
 * @module
 */
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The engine's JavaScript file name; its `.wasm` sits next to it under the same base name. */
export const ENGINE_FILE = 'node-sqlite3-wasm.js';

/**
 * The engine's file, searched in this order:
 * 1. the directory in the environment variable `SIBLITE_ENGINE_DIR`;
 * 2. next to this module (a bundle, with the two files copied next to it);
 * 3. the `node-sqlite3-wasm` package, resolved from this module (an ordinary install).
 * @throws Error naming every place it looked.
 */
export function locateEngine(): string {
  const here = thisModuleFile();
  const tried: string[] = [];
  const dirs = [process.env.SIBLITE_ENGINE_DIR, here ? path.dirname(here) : undefined];
  for (const dir of dirs) {
    if (!dir) continue;
    const candidate = path.join(dir, ENGINE_FILE);
    if (fs.existsSync(candidate) && fs.existsSync(candidate.replace(/\.js$/, '.wasm'))) return candidate;
    tried.push(candidate);
  }
  try {
    return createRequire(here ?? path.join(process.cwd(), 'index.js')).resolve('node-sqlite3-wasm');
  } catch {
    tried.push("the package 'node-sqlite3-wasm'");
  }
  throw new Error(
    `siblite: cannot find the SQLite engine (${ENGINE_FILE} and its .wasm); looked in ${tried.join(', ')}. ` +
      'A bundled app must ship both files next to the bundle, or set SIBLITE_ENGINE_DIR (see docs/bundling.md).',
  );
}

/** This module's file: from `import.meta.url`, or a CommonJS bundle's `__filename`. */
function thisModuleFile(): string | undefined {
  // A CommonJS bundle (esbuild --format=cjs) replaces import.meta with an empty object.
  const url: unknown = (import.meta as { url?: unknown }).url;
  if (typeof url === 'string' && url.startsWith('file:')) return fileURLToPath(url);
  return typeof __filename === 'string' ? __filename : undefined;
}
