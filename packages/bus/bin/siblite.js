#!/usr/bin/env node
// The `siblite` command. A committed launcher rather than a link to dist/ directly: pnpm links a
// workspace package's bins at install time, before the build has made dist/cli.js.
import { main } from '../dist/cli.js';

// Exit explicitly once the work is done (see dist/cli.js: a natural exit can hang on node 20).
process.exit(await main(process.argv.slice(2)));
