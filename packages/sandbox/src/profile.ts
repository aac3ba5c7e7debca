import { z } from 'zod';
import { TetherError } from '@tether/core';

/** Default request body limit (bytes): large enough for a DocumentReference with a small inline attachment. */
export const DEFAULT_MAX_BODY_BYTES = 2 * 1024 * 1024;

/**
 * How the sandbox FHIR server behaves: the switches that differ between real EHRs. A vendor profile (Epic,
 * Oracle Health, ...) is data of this shape plus, later, small hooks; `generic` is a plain, spec-following R4
 * server.
 */
export const sandboxProfileSchema = z
  .object({
    /** Profile name, shown in the CapabilityStatement. */
    name: z.string().min(1).default('generic'),
    /** Updates without If-Match are refused with 412 (Oracle Health requires If-Match). Default false. */
    requireIfMatch: z.boolean().default(false),
    /** Unknown search parameters are rejected with 400 instead of ignored. Default false. */
    strictSearch: z.boolean().default(false),
    /** Conditional create (`If-None-Exist`) is supported. Epic does not support it. Default true. */
    conditionalCreate: z.boolean().default(true),
    /** PUT to an id that does not exist creates it (update-as-create). Default true. */
    updateCreate: z.boolean().default(true),
    /**
     * Body of a successful create/update when the client sends no `Prefer`: the resource (`representation`),
     * an OperationOutcome (`outcome`), or nothing (`empty`: Oracle Health answers 201 with an empty body).
     */
    writeResponse: z.enum(['representation', 'outcome', 'empty']).default('representation'),
    /** Request body limit in bytes. */
    maxBodyBytes: z.number().int().positive().default(DEFAULT_MAX_BODY_BYTES),
  })
  .strict();

export type SandboxProfile = Readonly<z.output<typeof sandboxProfileSchema>>;

/** Validates a profile (partial input is filled with defaults). Throws CONFIG_INVALID. */
export function parseSandboxProfile(input: unknown): SandboxProfile {
  const r = sandboxProfileSchema.safeParse(input ?? {});
  if (!r.success) {
    const first = r.error.issues[0];
    throw new TetherError('CONFIG_INVALID', `Invalid sandbox profile at '${first?.path.join('.') ?? ''}': ${first?.message ?? ''}`);
  }
  return Object.freeze(r.data);
}
