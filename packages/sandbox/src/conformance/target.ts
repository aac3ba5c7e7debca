/**
 * The one surface the conformance scenarios talk to. A scenario only sees HTTP-shaped requests and answers, so the
 * same scenario code runs against the sandbox over real HTTP and against a third-party FHIR implementation
 * in-process, and any difference in the observations comes from the servers, not from the scenario.
 */

/** The methods the scenarios use (the sandbox supports no PATCH; see docs/sandbox.md). */
export type TargetMethod = 'GET' | 'POST' | 'PUT' | 'DELETE';

export interface TargetRequest {
  readonly method: TargetMethod;
  /**
   * Path below the FHIR base, without a leading slash, optionally with a query string that is already URL-encoded:
   * `Patient/123/_history`, `Patient?identifier=urn%3Aa%7Cv1`, or `''` for the base itself (batch / transaction).
   */
  readonly path: string;
  /** A JSON body; the adapter serialises (or clones) it so a target can never mutate the scenario's copy. */
  readonly body?: unknown;
  /**
   * A form body (`application/x-www-form-urlencoded`), for `POST [type]/_search`; exclusive with `body`. Values
   * are plain (not yet encoded).
   */
  readonly form?: Readonly<Record<string, string>>;
  /** Request headers with lower-case names (`if-match`, `if-none-exist`). */
  readonly headers?: Readonly<Record<string, string>>;
}

export interface TargetResponse {
  readonly status: number;
  /** The parsed JSON body, or undefined when the answer had none. */
  readonly body: unknown;
}

export type TargetName = 'sandbox' | 'medplum';

export interface FhirTarget {
  readonly name: TargetName;
  request(req: TargetRequest): Promise<TargetResponse>;
  /**
   * How many resource versions (creates, updates, deletions) the target has stored since it started. This is the
   * ground truth for "did this request write?", which a status code alone cannot answer: a 412 that still wrote, or a
   * 200 that silently wrote, is exactly the kind of defect the suite is looking for.
   */
  writeCount(): Promise<number>;
  close(): Promise<void>;
}
