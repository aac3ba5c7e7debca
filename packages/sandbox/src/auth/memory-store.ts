import type { Adapter, AdapterFactory, AdapterPayload } from 'oidc-provider';

/**
 * Storage for one sandbox authorization server: an oidc-provider adapter backed by plain Maps.
 *
 * Why not oidc-provider's bundled `MemoryAdapter`: it keeps its data in a *module-level* LRU of 1000 entries,
 * shared by every Provider in the process and silently evicting live tokens, sessions and replay-detection
 * entries under load. The sandbox wants one isolated store per server (tests create many) that only forgets
 * what has expired.
 *
 * Expiry uses `Date.now()`, not an injected clock, on purpose: oidc-provider computes every `exp` from
 * `Date.now()` itself, so a different clock here would disagree with it.
 */

interface Entry {
  readonly payload: AdapterPayload;
  /** Epoch milliseconds; `undefined` = never expires. */
  readonly expiresAt: number | undefined;
}

/** Models whose entries belong to a grant and go away together on `revokeByGrantId`. */
const GRANTABLE: ReadonlySet<string> = new Set([
  'AccessToken',
  'AuthorizationCode',
  'RefreshToken',
  'DeviceCode',
  'BackchannelAuthenticationRequest',
]);

/** How often, at most, `upsert` sweeps expired entries (milliseconds). */
const SWEEP_INTERVAL_MS = 60_000;

/** Options of {@link createMemoryStore}. */
export interface MemoryStoreOptions {
  /**
   * Models whose `consume()` deletes the entry instead of marking it consumed. The sandbox's `rotate` refresh
   * mode uses this for `RefreshToken`: a rotated-out refresh token becomes unknown (`invalid_grant`) instead
   * of "already used", which oidc-provider would answer by revoking the whole grant.
   */
  readonly deleteOnConsume?: ReadonlySet<string>;
}

/** The store plus the adapter factory to hand to oidc-provider's `adapter` option. */
export interface MemoryStore {
  readonly adapterFactory: AdapterFactory;
  /** Number of live (unexpired) entries; for tests and diagnostics. */
  size(): number;
  /** Drops everything (on server close). */
  clear(): void;
}

/** Creates an isolated in-memory store for one oidc-provider instance. */
export function createMemoryStore(options: MemoryStoreOptions = {}): MemoryStore {
  const deleteOnConsume = options.deleteOnConsume ?? new Set<string>();
  const entries = new Map<string, Entry>();
  /** grantId → keys of the entries issued under that grant. */
  const grants = new Map<string, Set<string>>();
  /** Session uid → entry key (oidc-provider looks sessions up both ways); device user code → entry key. */
  const sessionUids = new Map<string, string>();
  const userCodes = new Map<string, string>();
  let lastSweep = Date.now();

  const live = (key: string): Entry | undefined => {
    const entry = entries.get(key);
    if (entry === undefined) return undefined;
    if (entry.expiresAt !== undefined && entry.expiresAt <= Date.now()) {
      entries.delete(key);
      return undefined;
    }
    return entry;
  };

  const copyOf = (key: string | undefined): AdapterPayload | undefined => {
    const entry = key === undefined ? undefined : live(key);
    return entry === undefined ? undefined : structuredClone(entry.payload);
  };

  const sweep = (): void => {
    const now = Date.now();
    lastSweep = now;
    for (const [key, entry] of entries) {
      if (entry.expiresAt !== undefined && entry.expiresAt <= now) entries.delete(key);
    }
    for (const [grantId, keys] of grants) {
      for (const key of keys) if (!entries.has(key)) keys.delete(key);
      if (keys.size === 0) grants.delete(grantId);
    }
    for (const index of [sessionUids, userCodes]) {
      for (const [alias, key] of index) if (!entries.has(key)) index.delete(alias);
    }
  };

  class ModelAdapter implements Adapter {
    readonly #model: string;

    constructor(model: string) {
      this.#model = model;
    }

    #key(id: string): string {
      return `${this.#model}:${id}`;
    }

    async upsert(id: string, payload: AdapterPayload, expiresIn: number): Promise<void> {
      if (Date.now() - lastSweep > SWEEP_INTERVAL_MS) sweep();
      const key = this.#key(id);
      // Copies in and out: oidc-provider mutates model instances, which must not reach stored payloads.
      entries.set(key, {
        payload: structuredClone(payload),
        expiresAt: expiresIn > 0 ? Date.now() + expiresIn * 1000 : undefined,
      });
      if (this.#model === 'Session' && payload.uid !== undefined) sessionUids.set(payload.uid, key);
      if (payload.userCode !== undefined) userCodes.set(payload.userCode, key);
      if (GRANTABLE.has(this.#model) && payload.grantId !== undefined) {
        const keys = grants.get(payload.grantId) ?? new Set<string>();
        keys.add(key);
        grants.set(payload.grantId, keys);
      }
    }

    async find(id: string): Promise<AdapterPayload | undefined> {
      return copyOf(this.#key(id));
    }

    async findByUid(uid: string): Promise<AdapterPayload | undefined> {
      return copyOf(sessionUids.get(uid));
    }

    async findByUserCode(userCode: string): Promise<AdapterPayload | undefined> {
      return copyOf(userCodes.get(userCode));
    }

    async consume(id: string): Promise<void> {
      const key = this.#key(id);
      if (deleteOnConsume.has(this.#model)) {
        entries.delete(key);
        return;
      }
      const entry = live(key);
      if (entry !== undefined) {
        entries.set(key, { ...entry, payload: { ...entry.payload, consumed: Math.floor(Date.now() / 1000) } });
      }
    }

    async destroy(id: string): Promise<void> {
      entries.delete(this.#key(id));
    }

    async revokeByGrantId(grantId: string): Promise<void> {
      const keys = grants.get(grantId);
      if (keys === undefined) return;
      for (const key of keys) entries.delete(key);
      grants.delete(grantId);
    }
  }

  return {
    adapterFactory: (model: string) => new ModelAdapter(model),
    size: () => {
      sweep();
      return entries.size;
    },
    clear: () => {
      entries.clear();
      grants.clear();
      sessionUids.clear();
      userCodes.clear();
    },
  };
}
