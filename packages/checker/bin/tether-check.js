#!/usr/bin/env node
// The compiled CLI does the work; this file only hands it the arguments and turns its answer into the exit code
// (0 = no violation, 1 = violation, 2 = bad input). `process.exitCode` instead of `process.exit()` lets stdout
// drain when it is a pipe.
import { main } from '../dist/cli.js';

process.exitCode = await main(process.argv.slice(2));
