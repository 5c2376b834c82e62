/* Noise spec v2 ("baffle-noise-v2", see baffle/protocol/noise.py) in one pass: words, bits and floats are
 * produced in registers and each output element is written once. The numpy reference makes ~10 passes over
 * memory per block (one per ufunc); this file is what reaches memory speed. Built by `pip install -e .`
 * (setup.py, optional: without a C compiler baffle falls back to numpy, bit-identical) and loaded with
 * ctypes by baffle/protocol/noise_kernel.py, which releases the GIL around every call.
 *
 * Bit-identity with the numpy reference rests on two things: the integer arithmetic is the spec's, and the
 * only floating-point operations are the spec's correctly rounded float32 products and sums, each written
 * as its own statement and compiled with -ffp-contract=off (no fused multiply-add, no fast-math), so every
 * compiler and ISA gives the same bits. */
#define PY_SSIZE_T_CLEAN
#include <Python.h> /* first, as Python asks; only for the module stub at the end */
#include <stdint.h>
#include <string.h>

#define BAFFLE_KERNEL_ABI 1

#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__) && !defined(__clang__)
/* One binary, the AVX2 code on CPUs that have it (variable per-lane shifts), SSE2 elsewhere. */
#define HOT __attribute__((target_clones("avx2", "default")))
#else
#define HOT
#endif

#define GAMMA 0x9E3779B97F4A7C15ULL
#define MIX1 0xBF58476D1CE4E5B9ULL
#define MIX2 0x94D049BB133111EBULL
#define NIBBLE_MASK 0x0F0F0F0F0F0F0F0FULL
#define LANE_MASK 0x00FF00FF00FF00FFULL
#define GAUSS_CENTER 30
#define GAUSS_SCALE_BITS 0x3DDE2305u /* float32(1/sqrt(85)) */
#define TILE 2048                    /* elements per accumulation tile: 8 KiB of float32, stays in L1 */

static inline uint64_t word(uint64_t seed, uint64_t j) {
    uint64_t z = seed + (j + 1) * GAMMA;
    z = (z ^ (z >> 30)) * MIX1;
    z = (z ^ (z >> 27)) * MIX2;
    return z ^ (z >> 31);
}

static inline float f32(uint32_t bits) {
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline uint32_t bits32(float f) {
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    return b;
}

/* Sum of the four nibbles of each 16-bit lane of w, in the low byte of that lane (SWAR, as the reference). */
static inline uint64_t nibble_sums(uint64_t w) {
    uint64_t z = (w & NIBBLE_MASK) + ((w >> 4) & NIBBLE_MASK);
    z = z + (z >> 8);
    return z & LANE_MASK;
}

static inline float gauss_of(uint64_t sums, unsigned q) {
    float s = (float)((int)((sums >> (16 * q)) & 0xFF) - GAUSS_CENTER); /* exact: |s| <= 30 */
    float e = s * f32(GAUSS_SCALE_BITS);                                 /* the spec's one rounding */
    return e;
}

/* out[k] = float32(scale) * eps_{offset+k} for v2-rademacher, i.e. +scale or -scale (exact). */
HOT void baffle_v2_rademacher(uint64_t seed, uint64_t offset, int64_t n, float scale, float *out) {
    const uint32_t sbits = bits32(scale);
    int64_t k = 0;
    uint64_t i = offset;
    while (k < n && (i & 63)) { /* head: up to the next word boundary */
        uint64_t w = word(seed, i >> 6);
        out[k++] = f32(sbits ^ ((uint32_t)((w >> (i & 63)) & 1) << 31));
        i++;
    }
    for (; k + 64 <= n; k += 64, i += 64) { /* whole words: 64 signs each, vectorised over the bits */
        uint64_t w = word(seed, i >> 6);
        uint32_t lo = (uint32_t)w, hi = (uint32_t)(w >> 32);
        uint32_t *o = (uint32_t *)(out + k);
        for (int b = 0; b < 32; b++) o[b] = sbits ^ ((lo << (31 - b)) & 0x80000000u);
        for (int b = 0; b < 32; b++) o[32 + b] = sbits ^ ((hi << (31 - b)) & 0x80000000u);
    }
    for (; k < n; k++, i++) { /* tail */
        uint64_t w = word(seed, i >> 6);
        out[k] = f32(sbits ^ ((uint32_t)((w >> (i & 63)) & 1) << 31));
    }
}

#define WORDS 16 /* words per batch of the Gaussian's main loop: 64 elements */

/* The 4 * WORDS 16-bit lanes of a batch of words, lane q of word t at [4t + q] (the spec's element order). */
static inline void lanes_of(const uint64_t *w, uint16_t *lanes) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(lanes, w, WORDS * sizeof(uint64_t));
#else
    for (int t = 0; t < WORDS; t++)
        for (int q = 0; q < 4; q++) lanes[4 * t + q] = (uint16_t)(w[t] >> (16 * q));
#endif
}

/* out[k] = eps_{offset+k} for v2-gauss; times float32(scale) as a second rounded product when has_scale
 * (what numpy's direction(..., scale=c) computes: direction, then one float32 multiply). */
HOT void baffle_v2_gauss(uint64_t seed, uint64_t offset, int64_t n, int has_scale, float scale, float *out) {
    const float c = f32(GAUSS_SCALE_BITS);
    int64_t k = 0;
    uint64_t i = offset;
    for (; k < n && (i & 3); k++, i++) { /* head: up to the next word boundary */
        float e = gauss_of(nibble_sums(word(seed, i >> 2)), (unsigned)(i & 3));
        out[k] = has_scale ? e * scale : e;
    }
    for (; k + 4 * WORDS <= n; k += 4 * WORDS, i += 4 * WORDS) { /* batches: each loop below vectorises */
        uint64_t s[WORDS];
        uint16_t lanes[4 * WORDS];
        const uint64_t j0 = i >> 2;
        for (int t = 0; t < WORDS; t++) s[t] = nibble_sums(word(seed, j0 + (uint64_t)t));
        lanes_of(s, lanes);
        float *o = out + k;
        for (int t = 0; t < 4 * WORDS; t++) {
            float v = (float)((int)(lanes[t] & 0xFF) - GAUSS_CENTER);
            o[t] = v * c;
        }
        if (has_scale)
            for (int t = 0; t < 4 * WORDS; t++) o[t] = o[t] * scale;
    }
    for (; k < n; k++, i++) { /* tail */
        float e = gauss_of(nibble_sums(word(seed, i >> 2)), (unsigned)(i & 3));
        out[k] = has_scale ? e * scale : e;
    }
}

/* out[k] = sum_j float32(coef[j] * eps_j[offset + k]) for the K seeds, added in seed order starting from
 * +0.0 (the server's reconstruction of one block; numpy: direction(..., scale=c) then out += that). Tiled so
 * the partial sums stay in L1 while every direction streams past them: no direction is ever stored. */
HOT void baffle_v2_accumulate(int gauss, const uint64_t *seeds, const float *coef, int64_t K, uint64_t offset,
                              int64_t n, float *out) {
    float eps[TILE];
    for (int64_t a = 0; a < n; a += TILE) {
        int64_t m = n - a < TILE ? n - a : TILE;
        float *o = out + a;
        for (int64_t k = 0; k < m; k++) o[k] = 0.0f;
        for (int64_t j = 0; j < K; j++) {
            if (gauss)
                baffle_v2_gauss(seeds[j], offset + (uint64_t)a, m, 1, coef[j], eps);
            else
                baffle_v2_rademacher(seeds[j], offset + (uint64_t)a, m, coef[j], eps);
            for (int64_t k = 0; k < m; k++) o[k] = o[k] + eps[k];
        }
    }
}

int baffle_kernel_abi(void) { return BAFFLE_KERNEL_ABI; }

/* A Python extension module in name only (so setuptools can build and place it); the functions above are
 * called through ctypes, which releases the GIL, instead of through the C API. */
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_noise_kernel", NULL, -1, NULL};
PyMODINIT_FUNC PyInit__noise_kernel(void) { return PyModule_Create(&module); }
