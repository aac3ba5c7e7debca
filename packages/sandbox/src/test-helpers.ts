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

/** A backend-services test client: its registration for the sandbox and a way to get tokens. */
export interface TestClient {
  readonly registration: { client_id: string; scope: string; jwks: { keys: Record<string, unknown>[] } };
  token(tokenEndpoint: string, scope: string): Promise<string>;
}

/** Creates an ES384 backend-services client allowed `scope`. */
export async function testClient(clientId: string, scope: string): Promise<TestClient> {
  const { exportJWK, generateKeyPair, SignJWT } = await import('jose');
  const { publicKey, privateKey } = await generateKeyPair('ES384', { extractable: true });
  const pub = { ...(await exportJWK(publicKey)), kid: `${clientId}-key`, alg: 'ES384', use: 'sig' };
  return {
    registration: { client_id: clientId, scope, jwks: { keys: [pub] } },
    async token(tokenEndpoint, requested) {
      const now = Math.floor(Date.now() / 1000);
      const assertion = await new SignJWT({})
        .setProtectedHeader({ alg: 'ES384', kid: pub.kid })
        .setIssuer(clientId)
        .setSubject(clientId)
        .setAudience(tokenEndpoint)
        .setJti(crypto.randomUUID())
        .setIssuedAt(now)
        .setExpirationTime(now + 120)
        .sign(privateKey);
      const res = await fetch(tokenEndpoint, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({
          grant_type: 'client_credentials',
          scope: requested,
          client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer',
          client_assertion: assertion,
        }),
      });
      const body = (await res.json()) as { access_token?: string; error?: string };
      if (!body.access_token) throw new Error(`token request failed: ${body.error ?? res.status}`);
      return body.access_token;
    },
  };
}
