// Runs one suite in its own process (own WebAssembly heap, own JIT state) and sends its
// result to the parent (bench/run.mjs) over IPC.
import { pathToFileURL } from 'node:url';

const [file, mode] = process.argv.slice(2);
const quick = mode === 'quick';

function send(message) {
  return new Promise((resolve) => process.send(message, () => resolve()));
}

try {
  const mod = await import(pathToFileURL(file).href);
  const suite = mod.default ?? mod;
  const started = performance.now();
  const result = await suite.run({ quick, log: (...args) => console.log(...args) });
  await send({ type: 'result', result, durationMs: performance.now() - started });
  process.exit(0);
} catch (error) {
  await send({ type: 'crash', message: String(error?.stack ?? error) });
  process.exit(1);
}
