/**
 * Small HTTP helpers for the sandbox's own tests and for other packages' tests that drive a sandbox. They use
 * the global `fetch` on purpose: tests should exercise the sandbox through a client Tether did not write.
 */

export interface JsonResponse {
  readonly status: number;
  readonly headers: Headers;
  readonly body: any; // eslint-disable-line @typescript-eslint/no-explicit-any -- test convenience: FHIR JSON
  readonly text: string;
}

export interface RequestOptions {
  readonly method?: string;
  readonly body?: unknown;
  /** Raw body text (sent as is); wins over `body`. */
  readonly raw?: string;
  readonly headers?: Record<string, string>;
  readonly token?: string;
}

/** Sends one request and parses a JSON answer (if any). */
export async function http(url: string, options: RequestOptions = {}): Promise<JsonResponse> {
  const headers: Record<string, string> = { accept: 'application/fhir+json', ...(options.headers ?? {}) };
  let body: string | undefined;
  if (options.raw !== undefined) body = options.raw;
  else if (options.body !== undefined) body = JSON.stringify(options.body);
  if (body !== undefined && !Object.keys(headers).some((h) => h.toLowerCase() === 'content-type')) {
    headers['content-type'] = 'application/fhir+json';
  }
  if (options.token) headers['authorization'] = `Bearer ${options.token}`;
  const res = await fetch(url, { method: options.method ?? (body === undefined ? 'GET' : 'POST'), headers, body });
  const text = await res.text();
  let parsed: unknown;
  try {
    parsed = text ? JSON.parse(text) : undefined;
  } catch {
    parsed = undefined;
  }
  return { status: res.status, headers: res.headers, body: parsed, text };
}

/** The Tether error code inside an OperationOutcome answer. */
export function codeOf(res: JsonResponse): string | undefined {
  const issues = (res.body as { issue?: { details?: { coding?: { code?: string }[] } }[] } | undefined)?.issue;
  return issues?.[0]?.details?.coding?.[0]?.code;
}

/** Reads and parses the sandbox write log. */
export async function writeLog(origin: string): Promise<Record<string, unknown>[]> {
  const res = await fetch(`${origin}/_admin/write-log`);
  const text = await res.text();
  return text
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

/** A minimal valid Observation for a patient, with a business-key identifier. */
export function observation(patientId: string, key: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    resourceType: 'Observation',
    status: 'final',
    identifier: [{ system: 'urn:tether:test', value: key }],
    code: { coding: [{ system: 'http://loinc.org', code: '8867-4' }] },
    subject: { reference: `Patient/${patientId}` },
    effectiveDateTime: '2024-03-05T10:00:00Z',
    valueQuantity: { value: 72, unit: '/min', system: 'http://unitsofmeasure.org', code: '/min' },
    ...extra,
  };
}
