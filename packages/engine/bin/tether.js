#!/usr/bin/env node
// The `tether` command. The CLI itself is compiled TypeScript in dist/ (run `npm run build` first).
import { main } from '../dist/cli/main.js';

process.exitCode = await main(process.argv.slice(2));
