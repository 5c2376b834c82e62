/* GroupNorm -> activation -> 2x2 max-pool in one pass over a chunk's widest tensors (the batched engine's
 * per-member layout (N, C, H, W), C = members x channels). The three torch ops it replaces stream the
 * tensor from memory five times (norm out, activation in place, row maxima, column maxima); here each
 * (sample, group) block is read from memory for its statistics, then normalised, activated and pooled while
 * it sits in L1/L2, and only the pooled quarter is written. Built by `pip install -e .` (setup.py, optional:
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

#define NAP_ABI 1
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

/* x: (N, C, H, W) float32, contiguous; G groups over C; weight, bias: C floats each or NULL; out: (N, C, H/2,
 * W/2) (floor: an odd last row or column is dropped, as F.max_pool2d does). Returns 0, or -1 if out of memory. */
HOT int baffle_gn_act_pool2(const float *restrict x, const float *restrict weight, const float *restrict bias,
                            float *restrict out, int64_t N, int64_t C, int64_t G, int64_t H, int64_t W, float eps,
                            int act) {
    const int64_t cpg = C / G, HW = H * W, Ho = H / 2, Wo = W / 2, m = cpg * HW;
    float *y = malloc(sizeof(float) * (size_t)HW);
    if (!y) return -1;
    for (int64_t ng = 0; ng < N * G; ng++) {
        const float *xs = x + ng * m;
        const int64_t c0 = (ng % G) * cpg;
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
            const float scale = weight ? rstd * weight[c0 + c] : rstd;
            const float shift = (bias ? bias[c0 + c] : 0.0f) - mean * scale;
            const float *xc = xs + c * HW;
            affine_act(xc, y, HW, scale, shift, act);
            float *o = out + (ng * cpg + c) * Ho * Wo;
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
    free(y);
    return 0;
}

int baffle_nap_abi(void) { return NAP_ABI; }

/* A Python extension module in name only (so setuptools can build and place it); the function above is
 * called through ctypes, which releases the GIL, instead of through the C API. */
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_norm_act_pool", NULL, -1, NULL};
PyMODINIT_FUNC PyInit__norm_act_pool(void) { return PyModule_Create(&module); }
