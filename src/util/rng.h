/* rng.h — counter-based random numbers for reproducible parallel merges.
 *
 * Every random draw is a pure function of (seed, stream, index): the value for
 * element i does not depend on which thread computes it or in what order, so
 * random merge methods are bit-for-bit reproducible for a given seed whatever
 * the thread count. The mixer is SplitMix64's finaliser applied twice. */
#ifndef ALLOY_UTIL_RNG_H
#define ALLOY_UTIL_RNG_H

#include <stdint.h>

static inline uint64_t rng_mix64(uint64_t z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* A 64-bit hash of a string (FNV-1a, then mixed), to seed per-tensor streams. */
static inline uint64_t rng_hash_str(const char *s) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return rng_mix64(h);
}

/* The key of stream `stream` under `seed`; hoist it out of loops over index. */
static inline uint64_t rng_stream_key(uint64_t seed, uint64_t stream) {
    return rng_mix64(seed ^ rng_mix64(stream * 0xd1b54a32d192ed03ull + 1));
}

/* Uniform double in [0, 1) for element `index` of the stream with this key. */
static inline double rng_uniform_at(uint64_t key, uint64_t index) {
    return (double)(rng_mix64(key ^ index) >> 11) * (1.0 / 9007199254740992.0);
}

/* 32-bit draws for per-element masks over large tensors (DARE): element
 * `index` of the stream with key `key32` as a uniform 32-bit integer, one
 * round of an xorshift-multiply integer hash (the "lowbias32" constants of
 * Wellons' hash-prospector) over the Weyl sequence index * phi + key32. A
 * bijection of 32-bit lanes: it vectorises eight wide on AVX2, where the
 * 64-bit mixer above needs its multiplies emulated. (Hashing index ^ key32
 * instead leaves the kept counts of runs of 2^20 indices 17% more spread
 * than binomial; this form is within noise of the 64-bit mixer, in counts
 * and in coincidences between streams.) Indices past 2^32 take their high
 * half into the key (rng_key32), so the pair (key, index) names one draw. */
static inline uint32_t rng_bits32_at(uint32_t key32, uint32_t index) {
    uint32_t x = index * 0x9e3779b9u + key32;
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

/* The 32-bit key of indices [hi 2^32, (hi + 1) 2^32) of a stream. */
static inline uint32_t rng_key32(uint64_t key, uint64_t hi) { return (uint32_t)(rng_mix64(key ^ hi) >> 32); }

/* Element `index` of the stream with 64-bit key `key` kept with probability
 * thr / 2^32 (thr from rng_thr32). */
static inline int rng_keep32(uint64_t key, uint64_t index, uint32_t thr) {
    return rng_bits32_at(rng_key32(key, index >> 32), (uint32_t)index) < thr;
}

/* thr for probability p in [0, 1]: ceil(p 2^32), capped at 2^32 - 1 (a
 * keep probability 1 is the caller's: no mask at all). */
static inline uint32_t rng_thr32(double p) {
    double t = p * 4294967296.0;
    if (!(t > 0.0)) return 0;
    if (t >= 4294967295.0) return UINT32_MAX;
    uint32_t u = (uint32_t)t;
    return (double)u < t ? u + 1 : u;
}

/* Uniform double in [0, 1) for element `index` of stream `stream`. */
static inline double rng_uniform(uint64_t seed, uint64_t stream, uint64_t index) {
    return rng_uniform_at(rng_stream_key(seed, stream), index);
}

#endif
