import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { createKeyring, generateMasterKey, Keyring, parseMasterKey } from './keyring.js';

describe('Keyring (envelope encryption)', () => {
  const master = parseMasterKey(generateMasterKey());

  it('round-trips secrets and binds each ciphertext to its tenant and purpose', () => {
    const k = new Keyring(master);
    const wrapped = k.newWrappedDataKey('t1');
    const sealed = k.encrypt('t1', wrapped, 'refresh-token:system', 'SECRET-refresh');
    expect(sealed.includes(Buffer.from('SECRET-refresh'))).toBe(false);
    expect(k.decrypt('t1', wrapped, 'refresh-token:system', sealed)).toBe('SECRET-refresh');
    // Same plaintext twice: different ciphertexts (random IV).
    expect(k.encrypt('t1', wrapped, 'p', 'x').equals(k.encrypt('t1', wrapped, 'p', 'x'))).toBe(false);
    expect(() => k.decrypt('t1', wrapped, 'access-token:system', sealed)).toThrow(expect.objectContaining({ code: 'CRYPTO_DECRYPT_FAILED' }));
    const other = k.newWrappedDataKey('t2');
    expect(() => k.decrypt('t2', other, 'refresh-token:system', sealed)).toThrow(expect.objectContaining({ code: 'CRYPTO_DECRYPT_FAILED' }));
  });

  it('a second data key for the same tenant id never shadows the first (a failed duplicate registration)', () => {
    const k = new Keyring(master);
    const first = k.newWrappedDataKey('t1');
    const sealed = k.encrypt('t1', first, 'credentials', 'SECRET-jwk');
    const second = k.newWrappedDataKey('t1');
    expect(k.decrypt('t1', first, 'credentials', sealed)).toBe('SECRET-jwk');
    expect(() => k.decrypt('t1', second, 'credentials', sealed)).toThrow(expect.objectContaining({ code: 'CRYPTO_DECRYPT_FAILED' }));
  });

  it('detects tampering and refuses a wrong master key', () => {
    const k = new Keyring(master);
    const wrapped = k.newWrappedDataKey('t1');
    const sealed = k.encrypt('t1', wrapped, 'p', 'value');
    const tampered = Buffer.from(sealed);
    tampered[tampered.length - 1] = (tampered[tampered.length - 1] ?? 0) ^ 1;
    expect(() => k.decrypt('t1', wrapped, 'p', tampered)).toThrow(expect.objectContaining({ code: 'CRYPTO_DECRYPT_FAILED' }));
    const stranger = new Keyring(parseMasterKey(generateMasterKey()));
    expect(() => stranger.decrypt('t1', wrapped, 'p', sealed)).toThrow(expect.objectContaining({ code: 'CRYPTO_DECRYPT_FAILED' }));
  });

  it('rewraps data keys for master key rotation', () => {
    const old = new Keyring(master);
    const wrapped = old.newWrappedDataKey('t1');
    const sealed = old.encrypt('t1', wrapped, 'p', 'value');
    const next = new Keyring(parseMasterKey(generateMasterKey()));
    const rewrapped = old.rewrap('t1', wrapped, next);
    expect(next.decrypt('t1', rewrapped, 'p', sealed)).toBe('value');
  });

  it('parses hex and base64 master keys and never echoes a bad one', () => {
    expect(parseMasterKey('ab'.repeat(32))).toHaveLength(32);
    expect(parseMasterKey(generateMasterKey())).toHaveLength(32);
    try {
      parseMasterKey('not-a-key-CANARY');
      expect.unreachable();
    } catch (err) {
      expect((err as Error).message).not.toContain('CANARY');
      expect(err).toMatchObject({ code: 'CRYPTO_MASTER_KEY_MISSING' });
    }
  });

  it('fails closed in production without a master key; development keeps a private key file', async () => {
    await expect(createKeyring({ production: true })).rejects.toMatchObject({ code: 'CRYPTO_MASTER_KEY_MISSING' });
    const dir = mkdtempSync(join(tmpdir(), 'tether-key-'));
    try {
      const file = join(dir, 'sub', 'master-key');
      const a = await createKeyring({ production: false, devKeyFile: file });
      expect(statSync(file).mode & 0o777).toBe(0o600);
      const wrapped = a.newWrappedDataKey('t');
      const sealed = a.encrypt('t', wrapped, 'p', 'v');
      const b = await createKeyring({ production: false, devKeyFile: file });
      expect(b.decrypt('t', wrapped, 'p', sealed)).toBe('v');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
