/**
 * The fault injector's pseudo-random number generator: sfc32 (Chris Doty-Humphrey's "Small Fast Counting"
 * generator from PractRand), seeded through splitmix32.
 *
 * Why hand-written instead of a dependency or `Math.random`:
 * - `Math.random` cannot be seeded, and its algorithm is a V8 implementation detail that has changed before;
 *   a fault run must replay bit for bit on any Node version, so the algorithm has to live in our source.
 * - sfc32 is ~10 lines of 32-bit integer arithmetic (`Math.imul`, shifts, `| 0`), which JavaScript engines
 *   evaluate identically everywhere, passes PractRand/BigCrush, and needs no allocation per draw.
 * - splitmix32 turns an arbitrary (even tiny, e.g. `1`) seed into well-mixed state words, so neighbouring seeds
 *   give unrelated streams.
 *
 * This is *not* a cryptographic generator; it only decides which requests the sandbox sabotages.
 */

/** A seeded stream of pseudo-random numbers. */
export interface Rng {
  /** The next 32-bit unsigned integer, in [0, 2^32). */
  nextUint32(): number;
  /** The next float in [0, 1), with 32 bits of resolution (one `nextUint32` draw). */
  next(): number;
}

const TWO_POW_32 = 4_294_967_296;

/** Largest value accepted as a seed: seeds are unsigned 32-bit integers. */
export const MAX_SEED = 0xffff_ffff;

/**
 * splitmix32 (the 32-bit variant of Steele, Lea and Flood's SplitMix, constants from Hash Prospector), used only
 * to expand a seed into state words.
 */
export function splitmix32(seed: number): () => number {
  let state = seed | 0;
  return () => {
    state = (state + 0x9e37_79b9) | 0;
    let t = state ^ (state >>> 16);
    t = Math.imul(t, 0x21f0_aaad);
    t ^= t >>> 15;
    t = Math.imul(t, 0x735a_2d97);
    t ^= t >>> 15;
    return t >>> 0;
  };
}

/** 32-bit FNV-1a over the UTF-16 code units of `text`; used to turn a stream name into seed material. */
export function fnv1a32(text: string): number {
  let hash = 0x811c_9dc5;
  for (let i = 0; i < text.length; i++) {
    hash ^= text.charCodeAt(i);
    hash = Math.imul(hash, 0x0100_0193);
  }
  return hash >>> 0;
}

/** sfc32 over explicit state words (exported for the reference-vector test). `d` is sfc32's counter. */
export function sfc32(a: number, b: number, c: number, d: number): Rng {
  let sa = a | 0;
  let sb = b | 0;
  let sc = c | 0;
  let counter = d | 0;
  const nextUint32 = (): number => {
    const t = (((sa + sb) | 0) + counter) | 0;
    counter = (counter + 1) | 0;
    sa = sb ^ (sb >>> 9);
    sb = (sc + (sc << 3)) | 0;
    sc = (sc << 21) | (sc >>> 11);
    sc = (sc + t) | 0;
    return t >>> 0;
  };
  return { nextUint32, next: () => nextUint32() / TWO_POW_32 };
}

/** PractRand discards this many outputs after seeding so that the state words are fully mixed. */
const WARM_UP_DRAWS = 12;

/**
 * Creates the generator for `(seed, stream)`. Different stream names give independent-looking sequences from
 * the same seed; the injector gives every fault its own stream (named after the fault id) so that editing one
 * fault never moves another fault's decisions.
 *
 * @param seed - unsigned 32-bit integer (0 ≤ seed ≤ {@link MAX_SEED}); other numbers are reduced with `>>> 0`.
 * @param stream - stream name; default `''`.
 */
export function createRng(seed: number, stream = ''): Rng {
  const expand = splitmix32((seed ^ fnv1a32(stream)) >>> 0);
  // PractRand seeds sfc32's counter with 1; a, b and c come from splitmix32.
  const rng = sfc32(expand(), expand(), expand(), 1);
  for (let i = 0; i < WARM_UP_DRAWS; i++) rng.nextUint32();
  return rng;
}

/**
 * Maps a float `u` in [0, 1) to an integer uniformly in `[min, max]`, both inclusive (`u` < 1, so `max` is
 * reachable and never exceeded). Because `u` has 32 bits, each value's probability is off by at most
 * 2^-32 — irrelevant for the small ranges used here (Retry-After seconds, jitter milliseconds).
 */
export function uniformInt(u: number, min: number, max: number): number {
  return min + Math.floor(u * (max - min + 1));
}
