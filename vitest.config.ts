import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

export default defineConfig({
  resolve: {
    // Other transports' tests run the shared conformance suite, which imports @siblite/bus's
    // sources: the transport must see the same classes (errors checked with instanceof).
    alias: [{ find: /^@siblite\/bus$/, replacement: fileURLToPath(new URL('./packages/bus/src/index.ts', import.meta.url)) }],
  },
  test: {
    include: ['packages/*/test/**/*.test.ts', 'test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: 'forks',
  },
});
