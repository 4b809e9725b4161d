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

/* Uniform double in [0, 1) for element `index` of stream `stream`. */
static inline double rng_uniform(uint64_t seed, uint64_t stream, uint64_t index) {
    return rng_uniform_at(rng_stream_key(seed, stream), index);
}

#endif
