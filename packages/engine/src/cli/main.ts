import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Command, InvalidArgumentError, Option } from 'commander';
import { isTetherError, TetherError } from '@tether/core';
import { startSandbox, type SandboxClientConfig } from '@tether/sandbox';
import { loadOrCreateDemoClient, loadServiceConfig, startService } from '../service/index.js';
import { postTokenRequest, signClientAssertion } from '../auth/index.js';
import { registerRemoteCommands } from './remote.js';
import { registerAuditCommands } from './audit.js';

/** Exit codes of the `tether` CLI (documented in README and docs/cli.md). */
export const ExitCode = { Ok: 0, Failure: 1, Usage: 2 } as const;

/** Default data directory (relative to the working directory); `TETHER_DATA_DIR` overrides it. */
export const DEFAULT_DATA_DIR = '.tether';

function dataDir(): string {
  return resolve(process.env['TETHER_DATA_DIR'] ?? DEFAULT_DATA_DIR);
}

function intOption(name: string, min: number, max: number) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < min || n > max) {
      throw new InvalidArgumentError(`${name} must be an integer from ${min} to ${max}.`);
    }
    return n;
  };
}

function readJsonFile(kind: string, file: string): unknown {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    throw new TetherError('CONFIG_INVALID', `cannot read the ${kind} file ${file}`);
  }
  try {
    return JSON.parse(text);
  } catch {
    throw new TetherError('CONFIG_INVALID', `the ${kind} file ${file} is not valid JSON`);
  }
}

export function buildCli(): Command {
  const program = new Command('tether')
    .description('Tether: a resilient, durable integration engine between your app and EHRs.')
    .version('0.1.0')
    .showHelpAfterError()
    .exitOverride();

  program
    .command('start')
    .description('Run the engine as a service: HTTP API, console, metrics and write-back workers on the embedded store; in development also an embedded sandbox EHR registered as tenant "demo".')
    .option('--config <file>', 'configuration file (JSON); default TETHER_CONFIG or ./tether.config.json when present')
    .addOption(new Option('--port <port>', 'API port (0 = any free port); default 8080').argParser(intOption('--port', 0, 65535)))
    .option('--host <host>', 'interface to listen on; default 127.0.0.1')
    .option('--data-dir <dir>', 'data directory; default TETHER_DATA_DIR or ./.tether')
    .option('--production', 'production mode: refuse to start unless it is safe (see docs/operations.md)')
    .option('--no-sandbox', 'do not run the embedded sandbox EHR')
    .action(async (o: { config?: string; port?: number; host?: string; dataDir?: string; production?: boolean; sandbox: boolean }) => {
      const config = loadServiceConfig({
        ...(o.config ? { file: o.config } : {}),
        overrides: {
          ...(o.production ? { mode: 'production' as const } : {}),
          ...(o.dataDir ? { dataDir: o.dataDir } : {}),
          ...(o.port !== undefined || o.host !== undefined ? { http: { ...(o.port !== undefined ? { port: o.port } : {}), ...(o.host ? { host: o.host } : {}) } } : {}),
          ...(o.sandbox === false ? { sandbox: { enabled: false } } : {}),
        },
      });
      const service = await startService(config);
      const keyFile = join(config.dataDir, 'admin-api-key');
      const rel = (p: string): string => (p.startsWith(process.cwd() + '/') ? p.slice(process.cwd().length + 1) : p);
      const lines = [
        `Tether is running (${config.mode} mode).`,
        `  Console and API:  ${service.url}   (API reference: ${service.url}/docs)`,
        service.adminKeyFile
          ? `  Admin API key:    ${rel(service.adminKeyFile)}  (created now, file mode 600; sign in to the console with it)`
          : `  Admin API key:    ${existsSync(keyFile) ? rel(keyFile) : '(created on an earlier start)'}`,
        `  Store:            ${config.store.kind === 'sqlite' ? `SQLite ${rel(config.store.path ?? join(config.dataDir, 'tether.db'))}` : 'PostgreSQL'}`,
      ];
      if (service.sandbox) {
        lines.push(`  Demo tenant:      demo -> embedded sandbox EHR ${service.sandbox.fhirBaseUrl}`);
        lines.push(`  Try it:           curl -s -H "Authorization: Bearer $(cat ${rel(keyFile)})" ${service.url}/v1/tenants/demo/health`);
      }
      lines.push('Press Ctrl+C to stop.');
      process.stderr.write(`${lines.join('\n')}\n`);
      await new Promise<void>((done) => {
        const stop = (): void => {
          process.off('SIGINT', stop);
          process.off('SIGTERM', stop);
          service.close().then(done, done);
        };
        process.on('SIGINT', stop);
        process.on('SIGTERM', stop);
      });
      process.stderr.write('Tether stopped.\n');
    });

  program
    .command('sandbox')
    .description('Run the local sandbox EHR: a FHIR R4 server, an OAuth 2 server and seeded fault injection.')
    .addOption(new Option('--port <port>', 'TCP port (0 = any free port)').default(8090).argParser(intOption('--port', 0, 65535)))
    .option('--host <host>', 'interface to listen on', '127.0.0.1')
    .addOption(new Option('--seed <n>', 'seed of the fault sequence (replayable)').default(1).argParser(intOption('--seed', 0, 2 ** 31 - 1)))
    .option('--faults <file>', 'fault profile JSON (see docs/faults.md)')
    .option('--clients <file>', 'OAuth clients JSON; default: a generated demo client in <data dir>/sandbox/demo-client.json')
    .option('--profile <file>', 'server behaviour profile JSON (see docs/sandbox.md)')
    .option('--no-auth', 'serve FHIR without tokens')
    .addOption(new Option('--token-ttl <seconds>', 'access token lifetime').default(300).argParser(intOption('--token-ttl', 1, 86_400)))
    .addOption(new Option('--refresh-mode <mode>', 'refresh token behaviour').choices(['rotate', 'keep', 'single-use']).default('rotate'))
    .addOption(new Option('--validation-threads <n>', 'worker threads for structural validation (0 = main thread)').default(1).argParser(intOption('--validation-threads', 0, 8)))
    .option('--snapshot <file>', 'load the store from this NDJSON file at start, save it at stop')
    .option('--verbose', 'log every request as a JSON line on stderr (no PHI)')
    .action(async (o: {
      port: number; host: string; seed: number; faults?: string; clients?: string; profile?: string; auth: boolean;
      tokenTtl: number; refreshMode: 'rotate' | 'keep' | 'single-use'; snapshot?: string; verbose?: boolean; validationThreads: number;
    }) => {
      let clients: SandboxClientConfig[] = [];
      let demoFile: string | undefined;
      if (o.clients) {
        const parsed = readJsonFile('clients', o.clients);
        if (!Array.isArray(parsed)) throw new TetherError('CONFIG_INVALID', 'the clients file must hold a JSON array');
        clients = parsed as SandboxClientConfig[];
      } else if (o.auth) {
        demoFile = join(dataDir(), 'sandbox', 'demo-client.json');
        clients = [(await loadOrCreateDemoClient(demoFile)).registration];
      }
      const sandbox = await startSandbox({
        port: o.port,
        host: o.host,
        seed: o.seed,
        auth: o.auth,
        clients,
        tokenTtlSeconds: o.tokenTtl,
        refreshTokenMode: o.refreshMode,
        validationThreads: o.validationThreads,
        ...(o.faults ? { faults: readJsonFile('faults', o.faults) } : {}),
        ...(o.profile ? { profile: readJsonFile('profile', o.profile) } : {}),
        ...(o.snapshot ? { snapshotFile: resolve(o.snapshot) } : {}),
        ...(o.verbose ? { log: (line) => process.stderr.write(`${JSON.stringify({ time: new Date().toISOString(), ...line })}\n`) } : {}),
      });
      const lines = [
        `Tether sandbox EHR (${sandbox.profile.name} profile, seed ${o.seed}) is running.`,
        `  FHIR base URL:   ${sandbox.fhirBaseUrl}`,
        `  Token endpoint:  ${sandbox.tokenEndpoint ?? '(auth off)'}`,
        `  Write log:       ${sandbox.url}/_admin/write-log`,
        `  Fault stats:     ${sandbox.url}/_admin/faults/stats`,
      ];
      if (demoFile) {
        lines.push(
          `  Demo client:     tether-demo (ES384 key in ${demoFile})`,
          `  Get a token:     npx tether token --url ${sandbox.fhirBaseUrl}`,
        );
      }
      lines.push('Press Ctrl+C to stop.');
      process.stdout.write(`${lines.join('\n')}\n`);
      await new Promise<void>((done) => {
        const stop = (): void => {
          process.off('SIGINT', stop);
          process.off('SIGTERM', stop);
          sandbox.close().then(done, done);
        };
        process.on('SIGINT', stop);
        process.on('SIGTERM', stop);
      });
      process.stdout.write('Sandbox stopped.\n');
    });

  program
    .command('token')
    .description('Get an access token from a SMART backend-services token endpoint with a signed client assertion.')
    .option('--url <fhirBaseUrl>', 'FHIR base URL (the token endpoint is discovered from .well-known/smart-configuration)', 'http://127.0.0.1:8090/fhir/R4')
    .option('--client <file>', 'client file with client_id and private_jwk; default: the sandbox demo client')
    .option('--scope <scope>', 'requested scope', 'system/*.read')
    .action(async (o: { url: string; client?: string; scope: string }) => {
      const file = o.client ?? join(dataDir(), 'sandbox', 'demo-client.json');
      const client = readJsonFile('client', file) as { client_id?: string; private_jwk?: Record<string, unknown> };
      if (!client.client_id || !client.private_jwk) {
        throw new TetherError('CONFIG_INVALID', `${file} needs client_id and private_jwk`);
      }
      const discovery = await fetch(`${o.url.replace(/\/$/, '')}/.well-known/smart-configuration`);
      if (!discovery.ok) throw new Error(`discovery failed with HTTP ${discovery.status}`);
      const tokenEndpoint = ((await discovery.json()) as { token_endpoint?: string }).token_endpoint;
      if (!tokenEndpoint) throw new Error('the SMART configuration has no token_endpoint');
      const assertion = await signClientAssertion({ clientId: client.client_id, tokenEndpoint, privateJwk: client.private_jwk });
      try {
        const token = await postTokenRequest(
          tokenEndpoint,
          {
            grant_type: 'client_credentials',
            scope: o.scope,
            client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer',
            client_assertion: assertion,
          },
          {},
        );
        const out = { access_token: token.accessToken, token_type: 'Bearer', expires_in: token.expiresIn, scope: token.scope };
        process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
      } catch (err) {
        const oauthError = isTetherError(err) ? err.details['oauthError'] : undefined;
        process.stdout.write(`${JSON.stringify({ error: oauthError ?? 'token_request_failed' }, null, 2)}\n`);
        process.exitCode = ExitCode.Failure;
      }
    });

  registerRemoteCommands(program);
  registerAuditCommands(program);
  return program;
}

/** Runs the CLI; never throws: prints a clear message and sets the exit code. */
export async function main(argv: readonly string[]): Promise<number> {
  const program = buildCli();
  try {
    await program.parseAsync([...argv], { from: 'user' });
    return typeof process.exitCode === 'number' ? process.exitCode : ExitCode.Ok;
  } catch (err) {
    const e = err as { code?: string; exitCode?: number; message?: string };
    if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version' || e.code === 'commander.help') return ExitCode.Ok;
    if (typeof e.code === 'string' && e.code.startsWith('commander.')) return ExitCode.Usage;
    if (isTetherError(err) && err.category === 'config') {
      process.stderr.write(`tether: ${err.message}\n`);
      return ExitCode.Usage;
    }
    process.stderr.write(`tether: ${e.message ?? String(err)}\n`);
    return ExitCode.Failure;
  }
}
