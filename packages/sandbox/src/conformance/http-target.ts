import { startSandbox, type SandboxOptions } from '../server.js';
import type { FhirTarget, TargetName, TargetRequest, TargetResponse } from './target.js';

/**
 * A {@link FhirTarget} for any FHIR server reachable over HTTP, through the global `fetch` (a client Tether did not
 * write). `writeCount` is supplied by the caller because plain FHIR has no portable way to count stored versions.
 */
export function httpTarget(options: {
  readonly name: TargetName;
  /** Absolute FHIR base, e.g. `http://127.0.0.1:8090/fhir/R4`, without a trailing slash. */
  readonly fhirBaseUrl: string;
  readonly writeCount: () => Promise<number>;
  readonly close: () => Promise<void>;
}): FhirTarget {
  return {
    name: options.name,
    async request(req: TargetRequest): Promise<TargetResponse> {
      const headers: Record<string, string> = { accept: 'application/fhir+json', ...(req.headers ?? {}) };
      let body: string | undefined;
      if (req.form !== undefined) {
        body = new URLSearchParams(req.form).toString();
        headers['content-type'] = 'application/x-www-form-urlencoded';
      } else if (req.body !== undefined) {
        body = JSON.stringify(req.body);
        headers['content-type'] = 'application/fhir+json';
      }
      const url = req.path === '' ? options.fhirBaseUrl : `${options.fhirBaseUrl}/${req.path}`;
      const res = await fetch(url, { method: req.method, headers, body });
      const text = await res.text();
      let parsed: unknown;
      if (text !== '') {
        try {
          parsed = JSON.parse(text);
        } catch {
          // A non-JSON answer is itself an observation: the scenario sees "no body" and its fields record that.
          parsed = undefined;
        }
      }
      return { status: res.status, body: parsed };
    },
    writeCount: options.writeCount,
    close: options.close,
  };
}

/**
 * Starts a fresh sandbox (auth off, the spec-following `generic` profile unless overridden) and wraps it. Each
 * scenario gets its own server so counts and searches are never polluted by another scenario.
 */
export async function startSandboxTarget(options: Omit<SandboxOptions, 'auth'> = {}): Promise<FhirTarget> {
  const sandbox = await startSandbox({ ...options, auth: false });
  return httpTarget({
    name: 'sandbox',
    fhirBaseUrl: sandbox.fhirBaseUrl,
    // The write log is the sandbox's own ground truth (one NDJSON line per stored version); reading it over HTTP
    // keeps the adapter honest about what an operator would see.
    writeCount: async () => {
      const res = await fetch(`${sandbox.url}/_admin/write-log`);
      if (res.status !== 200) throw new Error(`write log answered ${res.status}`);
      const text = await res.text();
      return text.split('\n').filter((line) => line.trim() !== '').length;
    },
    close: () => sandbox.close(),
  });
}
