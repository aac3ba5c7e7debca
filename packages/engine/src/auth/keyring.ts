import { createCipheriv, createDecipheriv, hkdfSync, randomBytes } from 'node:crypto';
import { TetherError } from '@tether/core';

/** Length of the master key and of each tenant data key (AES-256). */
export const KEY_BYTES = 32;
const IV_BYTES = 12;
const TAG_BYTES = 16;
/** First byte of every ciphertext: the format version, so the format can change without guessing. */
const FORMAT_V1 = 1;

/**
 * Parses `TETHER_MASTER_KEY`: 32 bytes as base64 (44 chars) or hex (64 chars).
 * Throws CRYPTO_MASTER_KEY_MISSING (never echoing the value) when it is malformed.
 */
export function parseMasterKey(text: string): Buffer {
  const t = text.trim();
  let key: Buffer | undefined;
  if (/^[0-9a-fA-F]{64}$/.test(t)) key = Buffer.from(t, 'hex');
  else if (/^[A-Za-z0-9+/_-]{43}=?$/.test(t)) key = Buffer.from(t.replace(/-/g, '+').replace(/_/g, '/'), 'base64');
  if (!key || key.length !== KEY_BYTES) {
    throw new TetherError('CRYPTO_MASTER_KEY_MISSING', 'TETHER_MASTER_KEY must be 32 bytes, as 64 hex characters or base64.');
  }
  return key;
}

/** Generates a new master key, base64 encoded (for `tether` setup and development). */
export function generateMasterKey(): string {
  return randomBytes(KEY_BYTES).toString('base64');
}

function seal(key: Buffer, plaintext: Buffer, aad: string): Buffer {
  const iv = randomBytes(IV_BYTES);
  const cipher = createCipheriv('aes-256-gcm', key, iv);
  cipher.setAAD(Buffer.from(aad, 'utf8'));
  const body = Buffer.concat([cipher.update(plaintext), cipher.final()]);
  return Buffer.concat([Buffer.from([FORMAT_V1]), iv, cipher.getAuthTag(), body]);
}

function open(key: Buffer, sealed: Buffer, aad: string): Buffer {
  if (sealed.length < 1 + IV_BYTES + TAG_BYTES || sealed[0] !== FORMAT_V1) {
    throw new TetherError('CRYPTO_DECRYPT_FAILED', 'A stored secret has an unknown format.');
  }
  const iv = sealed.subarray(1, 1 + IV_BYTES);
  const tag = sealed.subarray(1 + IV_BYTES, 1 + IV_BYTES + TAG_BYTES);
  const body = sealed.subarray(1 + IV_BYTES + TAG_BYTES);
  try {
    const decipher = createDecipheriv('aes-256-gcm', key, iv);
    decipher.setAAD(Buffer.from(aad, 'utf8'));
    decipher.setAuthTag(tag);
    return Buffer.concat([decipher.update(body), decipher.final()]);
  } catch (err) {
    throw new TetherError('CRYPTO_DECRYPT_FAILED', 'A stored secret could not be decrypted (wrong master key or tampered data).', { cause: err });
  }
}

/**
 * Envelope encryption for tenant secrets (private keys, client secrets, refresh and access tokens).
 *
 * Each tenant has its own random data key; the data key is stored wrapped (AES-256-GCM) by the master key, and
 * every secret is encrypted (AES-256-GCM, random 96-bit IV) by the data key. The additional authenticated data
 * binds each ciphertext to its tenant and purpose, so a ciphertext copied to another row or field fails to
 * decrypt instead of being silently accepted. Rotating the master key only rewraps data keys.
 */
const cacheKey = (tenantId: string, wrapped: Buffer): string => `${tenantId}\u0000${wrapped.toString('base64')}`;

export class Keyring {
  readonly #master: Buffer;
  /**
   * Unwrapped data keys (unwrapping is cheap but not free), by tenant id AND wrapped bytes: a tenant id alone is
   * not enough, since a new data key for an id (a registration that then fails because the id exists, or a
   * tenant re-created) must never shadow the key that the stored secrets were encrypted with.
   */
  readonly #dataKeys = new Map<string, Buffer>();

  constructor(masterKey: Buffer) {
    if (masterKey.length !== KEY_BYTES) throw new TetherError('CRYPTO_MASTER_KEY_MISSING', 'The master key must be 32 bytes.');
    this.#master = Buffer.from(masterKey);
  }

  /** A new wrapped data key for a tenant. */
  newWrappedDataKey(tenantId: string): Buffer {
    const dataKey = randomBytes(KEY_BYTES);
    const wrapped = seal(this.#master, dataKey, `tether:data-key:${tenantId}`);
    this.#dataKeys.set(cacheKey(tenantId, wrapped), dataKey);
    return wrapped;
  }

  #dataKey(tenantId: string, wrapped: Buffer): Buffer {
    const id = cacheKey(tenantId, wrapped);
    const cached = this.#dataKeys.get(id);
    if (cached) return cached;
    const key = open(this.#master, wrapped, `tether:data-key:${tenantId}`);
    this.#dataKeys.set(id, key);
    return key;
  }

  /** Encrypts a secret for a tenant; `purpose` names the field (e.g. `refresh-token:system`). */
  encrypt(tenantId: string, wrappedDataKey: Buffer, purpose: string, plaintext: string): Buffer {
    return seal(this.#dataKey(tenantId, wrappedDataKey), Buffer.from(plaintext, 'utf8'), `tether:${tenantId}:${purpose}`);
  }

  decrypt(tenantId: string, wrappedDataKey: Buffer, purpose: string, sealed: Buffer): string {
    return open(this.#dataKey(tenantId, wrappedDataKey), sealed, `tether:${tenantId}:${purpose}`).toString('utf8');
  }

  /** Re-wraps a tenant's data key under a new master key (master key rotation). */
  rewrap(tenantId: string, wrappedDataKey: Buffer, next: Keyring): Buffer {
    const dataKey = this.#dataKey(tenantId, wrappedDataKey);
    return seal(next.#master, dataKey, `tether:data-key:${tenantId}`);
  }

  /** A 32-byte key for another purpose (e.g. keyed hashes of identifiers in logs), derived with HKDF-SHA-256. */
  deriveKey(purpose: string): Buffer {
    return Buffer.from(hkdfSync('sha256', this.#master, Buffer.alloc(0), `tether:${purpose}`, KEY_BYTES));
  }

  /** Forgets cached data keys (e.g. after rotation). */
  clearCache(): void {
    this.#dataKeys.clear();
  }
}

export interface KeyringOptions {
  /** The master key text (`TETHER_MASTER_KEY`). */
  readonly masterKey?: string | undefined;
  /** Production mode refuses to run without a master key. */
  readonly production: boolean;
  /**
   * Development only: where to keep a generated master key when none is given (file mode 600). Without it a
   * development keyring uses an ephemeral key (secrets do not survive a restart).
   */
  readonly devKeyFile?: string;
}

/** Builds the keyring from configuration; fails closed in production without `TETHER_MASTER_KEY`. */
export async function createKeyring(options: KeyringOptions): Promise<Keyring> {
  if (options.masterKey !== undefined && options.masterKey !== '') return new Keyring(parseMasterKey(options.masterKey));
  if (options.production) {
    throw new TetherError('CRYPTO_MASTER_KEY_MISSING', 'Production mode needs TETHER_MASTER_KEY (32 bytes, base64 or hex).');
  }
  if (!options.devKeyFile) return new Keyring(randomBytes(KEY_BYTES));
  const { readFile, writeFile, mkdir } = await import('node:fs/promises');
  const { dirname } = await import('node:path');
  try {
    return new Keyring(parseMasterKey(await readFile(options.devKeyFile, 'utf8')));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const key = generateMasterKey();
  await mkdir(dirname(options.devKeyFile), { recursive: true });
  await writeFile(options.devKeyFile, `${key}\n`, { mode: 0o600, flag: 'wx' }).catch(async (err: NodeJS.ErrnoException) => {
    // Another process created it first: use theirs.
    if (err.code !== 'EEXIST') throw err;
  });
  return new Keyring(parseMasterKey(await readFile(options.devKeyFile, 'utf8')));
}
