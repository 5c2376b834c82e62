/* GroupNorm -> activation -> 2x2 max-pool in one pass over a chunk's widest tensors (the batched engine's
 * per-member layout (N, C, H, W), C = members x channels). The three torch ops it replaces stream the
 * tensor from memory five times (norm out, activation in place, row maxima, column maxima); here each
 * (sample, group) block is read from memory for its statistics, then normalised, activated and pooled while
 * it sits in L1/L2, and only the pooled quarter is written. baffle_conv_gn_act_pool2 computes the first layer's
 * convolution inside the same pass (see its section below), so that layer's output is never written at all.
 * Built by `pip install -e .` (setup.py, optional:
 * without a C compiler the engine runs the torch ops) and called through ctypes from norm_act_pool.py, which
 * releases the GIL, so chunk workers run it on real threads.
 *
 * Numerics: the statistics are float32 sums over 16 interleaved lanes, and the affine map is applied as torch's
 * CPU GroupNorm applies it (x * scale + shift with scale = rstd * weight, shift = bias - mean * scale), so results
 * agree with torch to float32 rounding, not bit for bit (tests/engine/test_norm_act_pool.py). */
#define PY_SSIZE_T_CLEAN
#include <Python.h> /* first, as Python asks; only for the module stub at the end */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define NAP_ABI 2
#define LANES 16

#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__) && !defined(__clang__)
#define HOT __attribute__((target_clones("avx2", "default")))
#else
#define HOT
#endif

enum { ACT_IDENTITY = 0, ACT_RELU = 1, ACT_HARDSWISH = 2 };

/* One channel: y = act(x * scale + shift), a loop per activation so each vectorises without a branch. */
static inline void affine_act(const float *restrict x, float *restrict y, int64_t n, float scale, float shift, int act) {
    if (act == ACT_HARDSWISH) {
        for (int64_t k = 0; k < n; k++) {
            float v = x[k] * scale + shift;
            float r = v + 3.0f;
            r = r < 0.0f ? 0.0f : r;
            r = r > 6.0f ? 6.0f : r;
            y[k] = v * r * (1.0f / 6.0f);
        }
    } else if (act == ACT_RELU) {
        for (int64_t k = 0; k < n; k++) {
            float v = x[k] * scale + shift;
            y[k] = v > 0.0f ? v : 0.0f;
        }
    } else {
        for (int64_t k = 0; k < n; k++) y[k] = x[k] * scale + shift;
    }
}

/* A NaN anywhere in a group makes its mean, and so every value of the group, NaN: no NaN test is needed here
 * for the pooled values to be NaN where torch's are. */
static inline float maxf(float a, float b) { return a > b ? a : b; }

/* One (sample, group) block of cpg channels of H x W values at xs: its statistics, then each channel normalised,
 * activated and 2x2 max-pooled into out (cpg channels of H/2 x W/2). y: H*W floats of scratch. */
static inline void group_norm_act_pool(const float *restrict xs, const float *restrict weight, const float *restrict bias,
                                       float *restrict out, float *restrict y, int64_t cpg, int64_t H, int64_t W,
                                       float eps, int act) {
    const int64_t HW = H * W, Ho = H / 2, Wo = W / 2, m = cpg * HW;
    float acc[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= m; i += LANES)
        for (int l = 0; l < LANES; l++) acc[l] += xs[i + l];
    float s = 0.0f;
    for (int l = 0; l < LANES; l++) s += acc[l];
    for (; i < m; i++) s += xs[i];
    const float mean = s / (float)m;
    float acc2[LANES] = {0};
    for (i = 0; i + LANES <= m; i += LANES)
        for (int l = 0; l < LANES; l++) {
            float d = xs[i + l] - mean;
            acc2[l] += d * d;
        }
    float v = 0.0f;
    for (int l = 0; l < LANES; l++) v += acc2[l];
    for (; i < m; i++) {
        float d = xs[i] - mean;
        v += d * d;
    }
    const float rstd = 1.0f / sqrtf(v / (float)m + eps);
    for (int64_t c = 0; c < cpg; c++) {
        const float scale = weight ? rstd * weight[c] : rstd;
        const float shift = (bias ? bias[c] : 0.0f) - mean * scale;
        affine_act(xs + c * HW, y, HW, scale, shift, act);
        float *o = out + c * Ho * Wo;
        /* each output from its four inputs: the rows are short (7-14 values), so one scalar pass beats a
         * vectorised row-maxima pass plus a strided column pass (benchmarks/norm_act_pool.py: chains 2.0-2.2x the
         * torch ops with this pass, 1.5-1.6x with the two) */
        for (int64_t r = 0; r < Ho; r++) {
            const float *r0 = y + 2 * r * W, *r1 = r0 + W;
            float *orow = o + r * Wo;
            for (int64_t q = 0; q < Wo; q++)
                orow[q] = maxf(maxf(r0[2 * q], r0[2 * q + 1]), maxf(r1[2 * q], r1[2 * q + 1]));
        }
    }
}

/* x: (N, C, H, W) float32, contiguous; G groups over C; weight, bias: C floats each or NULL; out: (N, C, H/2,
 * W/2) (floor: an odd last row or column is dropped, as F.max_pool2d does). Returns 0, or -1 if out of memory. */
HOT int baffle_gn_act_pool2(const float *restrict x, const float *restrict weight, const float *restrict bias,
                            float *restrict out, int64_t N, int64_t C, int64_t G, int64_t H, int64_t W, float eps,
                            int act) {
    const int64_t cpg = C / G, HW = H * W, Ho = H / 2, Wo = W / 2;
    float *y = malloc(sizeof(float) * (size_t)HW);
    if (!y) return -1;
    for (int64_t ng = 0; ng < N * G; ng++) {
        const int64_t c0 = (ng % G) * cpg;
        group_norm_act_pool(x + ng * cpg * HW, weight ? weight + c0 : NULL, bias ? bias + c0 : NULL,
                            out + ng * cpg * Ho * Wo, y, cpg, H, W, eps, act);
    }
    free(y);
    return 0;
}

/* ---- the convolution before the chain, fused in: a shared input (the first layer) and per-member filters ----
 *
 * y[c][l] = (sum over t of w[c][t] * cols[t][l], accumulated in t order with fused multiply-adds from 0) + bias[c]
 * for one member's C1 filters (w: C1 x K) on one sample's im2col matrix (cols: K rows of L values, ldc apart).
 * Every (member, sample) block is computed alone and in this fixed order, so a member's values do not depend on
 * the chunk it is in, and the AVX2 path and the portable one agree bit for bit (each lane runs the same fmaf
 * sequence). */
typedef void (*conv_block_fn)(const float *restrict cols, const float *restrict w, const float *restrict bias,
                              float *restrict y, int64_t C1, int64_t K, int64_t ldc, int64_t L);

static void conv_block_portable(const float *restrict cols, const float *restrict w, const float *restrict bias,
                                float *restrict y, int64_t C1, int64_t K, int64_t ldc, int64_t L) {
    for (int64_t c = 0; c < C1; c++)
        for (int64_t l = 0; l < L; l++) {
            float a = 0.0f;
            for (int64_t t = 0; t < K; t++) a = fmaf(w[c * K + t], cols[t * ldc + l], a);
            y[c * L + l] = a + (bias ? bias[c] : 0.0f);
        }
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_AVX2_PATH 1
/* 4 filters x 3 registers of 8 positions, the 12 accumulators named one by one (GCC keeps an accumulator array
 * on the stack, storing it every step): per im2col row, 3 loads and 4 broadcasts feed 12 FMAs. */
#define AVX2 __attribute__((target("avx2,fma")))
#define BIAS(i) _mm256_set1_ps(bias ? bias[i] : 0.0f)
AVX2 static inline void conv_tile_4x3(const float *restrict cols, const float *restrict w, const float *restrict bias,
                                      float *restrict y, int64_t K, int64_t ldc, int64_t L, int64_t l) {
    __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a10 = a00, a11 = a00, a12 = a00;
    __m256 a20 = a00, a21 = a00, a22 = a00, a30 = a00, a31 = a00, a32 = a00;
    for (int64_t t = 0; t < K; t++) {
        const float *r = cols + t * ldc + l;
        const __m256 x0 = _mm256_loadu_ps(r), x1 = _mm256_loadu_ps(r + 8), x2 = _mm256_loadu_ps(r + 16);
        __m256 wi = _mm256_broadcast_ss(w + t);
        a00 = _mm256_fmadd_ps(wi, x0, a00), a01 = _mm256_fmadd_ps(wi, x1, a01), a02 = _mm256_fmadd_ps(wi, x2, a02);
        wi = _mm256_broadcast_ss(w + K + t);
        a10 = _mm256_fmadd_ps(wi, x0, a10), a11 = _mm256_fmadd_ps(wi, x1, a11), a12 = _mm256_fmadd_ps(wi, x2, a12);
        wi = _mm256_broadcast_ss(w + 2 * K + t);
        a20 = _mm256_fmadd_ps(wi, x0, a20), a21 = _mm256_fmadd_ps(wi, x1, a21), a22 = _mm256_fmadd_ps(wi, x2, a22);
        wi = _mm256_broadcast_ss(w + 3 * K + t);
        a30 = _mm256_fmadd_ps(wi, x0, a30), a31 = _mm256_fmadd_ps(wi, x1, a31), a32 = _mm256_fmadd_ps(wi, x2, a32);
    }
    float *o = y + l;
    __m256 b = BIAS(0);
    _mm256_storeu_ps(o, _mm256_add_ps(a00, b)), _mm256_storeu_ps(o + 8, _mm256_add_ps(a01, b)), _mm256_storeu_ps(o + 16, _mm256_add_ps(a02, b));
    o += L, b = BIAS(1);
    _mm256_storeu_ps(o, _mm256_add_ps(a10, b)), _mm256_storeu_ps(o + 8, _mm256_add_ps(a11, b)), _mm256_storeu_ps(o + 16, _mm256_add_ps(a12, b));
    o += L, b = BIAS(2);
    _mm256_storeu_ps(o, _mm256_add_ps(a20, b)), _mm256_storeu_ps(o + 8, _mm256_add_ps(a21, b)), _mm256_storeu_ps(o + 16, _mm256_add_ps(a22, b));
    o += L, b = BIAS(3);
    _mm256_storeu_ps(o, _mm256_add_ps(a30, b)), _mm256_storeu_ps(o + 8, _mm256_add_ps(a31, b)), _mm256_storeu_ps(o + 16, _mm256_add_ps(a32, b));
}

/* n filters (1-4) x 1 register of the positions [l, l + 8) the mask keeps (the last positions: masked loads and
 * stores never touch memory past the row): what the 4 x 3 tiles leave. Chains of K dependent FMAs, so several
 * filters at once keep the FMA units busy; each lane runs the same sequence as the wide tiles. */
AVX2 static inline void conv_tile_nx1(const float *restrict cols, const float *restrict w, const float *restrict bias,
                                      float *restrict y, int64_t n, int64_t K, int64_t ldc, int64_t L, int64_t l,
                                      __m256i mask) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t t = 0; t < K; t++) {
        const __m256 x = _mm256_maskload_ps(cols + t * ldc + l, mask);
        a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(w + t), x, a0);
        if (n > 1) a1 = _mm256_fmadd_ps(_mm256_broadcast_ss(w + K + t), x, a1);
        if (n > 2) a2 = _mm256_fmadd_ps(_mm256_broadcast_ss(w + 2 * K + t), x, a2);
        if (n > 3) a3 = _mm256_fmadd_ps(_mm256_broadcast_ss(w + 3 * K + t), x, a3);
    }
    _mm256_maskstore_ps(y + l, mask, _mm256_add_ps(a0, BIAS(0)));
    if (n > 1) _mm256_maskstore_ps(y + L + l, mask, _mm256_add_ps(a1, BIAS(1)));
    if (n > 2) _mm256_maskstore_ps(y + 2 * L + l, mask, _mm256_add_ps(a2, BIAS(2)));
    if (n > 3) _mm256_maskstore_ps(y + 3 * L + l, mask, _mm256_add_ps(a3, BIAS(3)));
}

/* Filters in groups of 4, positions in tiles of 24, the rest in masked tiles of 8. */
AVX2 static void conv_block_avx2(const float *restrict cols, const float *restrict w, const float *restrict bias,
                                 float *restrict y, int64_t C1, int64_t K, int64_t ldc, int64_t L) {
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int64_t c = 0; c < C1; c += 4) {
        const int64_t n = C1 - c < 4 ? C1 - c : 4;
        const float *wc = w + c * K, *bc = bias ? bias + c : NULL;
        int64_t l = 0;
        if (n == 4)
            for (; l + 24 <= L; l += 24) conv_tile_4x3(cols, wc, bc, y + c * L, K, ldc, L, l);
        for (; l < L; l += 8) {
            const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(L - l < 8 ? L - l : 8)), lanes);
            conv_tile_nx1(cols, wc, bc, y + c * L, n, K, ldc, L, l, mask);
        }
    }
}
#endif

/* BAFFLE_FUSED_PORTABLE=1 takes the portable loop on any CPU (tests check that both paths give the same bits). */
static conv_block_fn conv_block(void) {
    const char *portable = getenv("BAFFLE_FUSED_PORTABLE");
    if (portable && portable[0] == '1') return conv_block_portable;
#ifdef HAVE_AVX2_PATH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return conv_block_avx2;
#endif
    return conv_block_portable;
}

/* cols: (N, K, ldc) float32, one im2col matrix per sample shared by the P members, its rows padded to ldc >= L
 * values (a multiple of 8 keeps every aligned 8-value load within one cache line: much faster at L = 196 in an
 * ad hoc check); w: (P*C1, K), each member's filters; cbias: P*C1 floats or NULL; then GroupNorm with G groups
 * over the P*C1 channels (gn_w, gn_b: P*C1 floats or NULL), the activation and the 2x2 max-pool of the H x W (H*W = L) map: out (N, P*C1, H/2, W/2).
 * Only one member's C1 x L convolution output exists at a time (in L1/L2), never the chunk's full-resolution
 * tensor. Returns 0, or -1 if out of memory. */
HOT int baffle_conv_gn_act_pool2(const float *restrict cols, const float *restrict w, const float *restrict cbias,
                                 const float *restrict gn_w, const float *restrict gn_b, float *restrict out,
                                 int64_t N, int64_t P, int64_t C1, int64_t K, int64_t ldc, int64_t G, int64_t H,
                                 int64_t W, float eps, int act) {
    const int64_t L = H * W, M = P * C1, cpg = M / G, Ho = H / 2, Wo = W / 2;
    const conv_block_fn block = conv_block();
    float *buf = malloc(sizeof(float) * (size_t)(C1 * L + L));
    if (!buf) return -1;
    float *yc = buf, *scratch = buf + C1 * L;
    for (int64_t n = 0; n < N; n++)
        for (int64_t p = 0; p < P; p++) {
            block(cols + n * K * ldc, w + p * C1 * K, cbias ? cbias + p * C1 : NULL, yc, C1, K, ldc, L);
            for (int64_t g = 0; g < C1 / cpg; g++) {
                const int64_t c0 = p * C1 + g * cpg; /* first channel of the group among the P*C1 */
                group_norm_act_pool(yc + g * cpg * L, gn_w ? gn_w + c0 : NULL, gn_b ? gn_b + c0 : NULL,
                                    out + (n * M + c0) * Ho * Wo, scratch, cpg, H, W, eps, act);
            }
        }
    free(buf);
    return 0;
}

int baffle_nap_abi(void) { return NAP_ABI; }

/* A Python extension module in name only (so setuptools can build and place it); the function above is
 * called through ctypes, which releases the GIL, instead of through the C API. */
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_norm_act_pool", NULL, -1, NULL};
PyMODINIT_FUNC PyInit__norm_act_pool(void) { return PyModule_Create(&module); }
