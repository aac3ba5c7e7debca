import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isCheckerInputError, type CheckerInputError } from './errors.js';
import { parseNdjson, readNdjson } from './ndjson.js';
import { toLedgerEntry, toWriteLogEntry } from './validate.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tether-checker-ndjson-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function thrown(fn: () => unknown): CheckerInputError {
  try {
    fn();
  } catch (err) {
    if (isCheckerInputError(err)) return err;
    throw err;
  }
  throw new Error('expected a CheckerInputError');
}

describe('parseNdjson', () => {
  it('skips blank lines, a byte-order mark and CR of CRLF', () => {
    expect(parseNdjson('\ufeff{"a":1}\r\n\n  \r\n[2]\r\n', 'f')).toEqual([{ a: 1 }, [2]]);
  });

  it('names file and line of a malformed line, without quoting it (it may hold a canary)', () => {
    const err = thrown(() => parseNdjson('{"a":1}\n\n{"name":"Canary Person"\n', 'final.ndjson'));
    expect(err.message).toBe('final.ndjson:3: not valid JSON');
    expect(err).toMatchObject({ file: 'final.ndjson', line: 3, code: 'CHECKER_INPUT_INVALID' });
    expect(err.message).not.toContain('Canary');
  });

  it('names file and line of a record of the wrong shape', () => {
    const line = JSON.stringify({ seq: 1, op: 'upsert', resourceType: 'Observation', id: 'x', identifiers: [] });
    const err = thrown(() => parseNdjson(`${line}\n`, 'write-log.ndjson', toWriteLogEntry));
    expect(err.message).toBe("write-log.ndjson:1: 'op' must be one of 'create', 'update', 'delete'");
    expect(err.line).toBe(1);
  });
});

describe('record validation', () => {
  const good = { commandId: 'c', businessKey: 's|v', resourceType: 'Observation', action: 'create', expect: 'accept', contentHash: 'A'.repeat(64), seq: 1 };
  it('normalises the hash to lower case and keeps unknown fields out', () => {
    expect(toLedgerEntry({ ...good, sourceMessageId: 'm1' }, 'x')).toEqual({ ...good, contentHash: 'a'.repeat(64) });
  });
  it.each([
    [{ businessKey: 'no-bar' }, "'businessKey' must be 'system|value'"],
    [{ businessKey: 's|' }, "'businessKey' must be 'system|value'"],
    [{ contentHash: 'abc' }, "'contentHash' must be a SHA-256 hex digest"],
    [{ seq: '1' }, "'seq' must be a finite number"],
    [{ canaries: [''] }, "'canaries' must be an array of non-empty strings"],
    [{ expect: 'maybe' }, "'expect' must be one of 'accept', 'reject'"],
  ])('rejects %j', (patch, message) => {
    expect(() => toLedgerEntry({ ...good, ...patch }, 'ledger.ndjson:9')).toThrow(`ledger.ndjson:9: ${message}`);
  });
});

describe('readNdjson', () => {
  it('reads and validates a file', async () => {
    const path = join(dir, 'w.ndjson');
    await writeFile(path, `${JSON.stringify({ seq: 1, at: 't', op: 'create', resourceType: 'Patient', id: '1', versionId: '1', requestId: 'r', interaction: 'create', contentHash: 'h', identifiers: ['s|v'] })}\n`);
    expect(await readNdjson(path, toWriteLogEntry)).toHaveLength(1);
    expect(await readNdjson(path)).toHaveLength(1);
  });

  it('turns a missing file into a CheckerInputError naming it', async () => {
    const path = join(dir, 'missing.ndjson');
    await expect(readNdjson(path)).rejects.toThrow(`${path}: cannot read the file (ENOENT)`);
  });
});
