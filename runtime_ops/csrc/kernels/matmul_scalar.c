/* Scalar reference inner loops: define the numerics (compiled with -ffp-contract=off). */
#include "qc_internal.h"

#include <math.h>

static void lut_block_scalar(const uint8_t *nib, const int8_t *tables, size_t tab_stride, const float *scales,
                             int G, int S, int R, float *acc) {
    for (int r = 0; r < R; ++r) {
        const int8_t *T = tables + (size_t)r * tab_stride;
        for (int g = 0; g < G; ++g) {
            int32_t isum[32] = {0};
            for (int s = 0; s < S; ++s) {
                const uint8_t *nb = nib + ((size_t)g * S + s) * 32;
                const int8_t *t0 = T + ((size_t)g * S + s) * 32, *t1 = t0 + 16;
                for (int c = 0; c < 32; ++c) isum[c] += t0[nb[c] & 15] + t1[nb[c] >> 4];
            }
            for (int c = 0; c < 32; ++c) acc[r * 32 + c] = acc[r * 32 + c] + (float)isum[c] * scales[g * 32 + c];
        }
    }
}

static void lut_pair_block_scalar(const uint8_t *nib, const int8_t *tables, size_t tab_stride, const float *scales,
                                  int G, int S, int R, float *acc) {
    for (int r = 0; r < R; ++r) {
        const int8_t *T = tables + (size_t)r * tab_stride;
        for (int g = 0; g < G; ++g) {
            int32_t isum[32] = {0};
            for (int s = 0; s < S; ++s) {
                const uint8_t *nb = nib + ((size_t)g * S + s) * 32;
                const int8_t *t = T + ((size_t)g * S + s) * 16;
                for (int c = 0; c < 32; ++c) {
                    const int sh = c < 16 ? 0 : 4, j = 2 * (c % 16);
                    isum[c] += t[(nb[j] >> sh) & 15] + t[(nb[j + 1] >> sh) & 15];
                }
            }
            for (int c = 0; c < 32; ++c) acc[r * 32 + c] = acc[r * 32 + c] + (float)isum[c] * scales[g * 32 + c];
        }
    }
}

static void fma_panel_scalar(int M, const float *A, size_t lda, const float *panel, int kb, float *Y, size_t ldy,
                             int nc) {
    for (int m = 0; m < M; ++m) {
        float *y = Y + (size_t)m * ldy;
        const float *a = A + (size_t)m * lda;
        for (int k = 0; k < kb; ++k) {
            const float av = a[k];
            const float *p = panel + (size_t)k * QC_FMA_COLS;
            for (int c = 0; c < nc; ++c) y[c] = y[c] + av * p[c];
        }
    }
}

static void cb_dot_scalar(const uint8_t *nib, const int8_t *cb, const int32_t *wsum, const int32_t *asum, int NC, const int8_t *A,
                          size_t a_stride, int kp, int R, int32_t *out) {
    for (int c = 0; c < NC; ++c)
        for (int r = 0; r < R; ++r) {
            const int8_t *a = A + (size_t)r * a_stride, *w = cb + 16 * c;
            const uint8_t *nb = nib + (size_t)c * 64;
            int32_t s = 0;
            for (int t = 0; t < kp / 128; ++t)
                for (int j = 0; j < 64; ++j) {
                    const uint8_t v = nb[t * 512 + j];
                    s += w[v & 15] * a[128 * t + j] + w[v >> 4] * a[128 * t + 64 + j];
                }
            out[r * 8 + c] = s;
        }
}

void qc_lut_tables_scalar(const float *av, int64_t Q, float inv, int8_t *T) {
    for (int64_t q = 0; q < Q; ++q) {
        const float *x = av + q * 4;
        int8_t *t = T + q * 16;
        for (int i = 0; i < 16; ++i) {
            const float lo = (i & 1 ? x[0] : -x[0]) + (i & 2 ? x[1] : -x[1]);
            const float hi = (i & 4 ? x[2] : -x[2]) + (i & 8 ? x[3] : -x[3]);
            long qv = lrintf((lo + hi) * inv);
            t[i] = (int8_t)(qv > 127 ? 127 : qv < -127 ? -127 : qv);
        }
    }
}

static const qc_isa kScalar = {"scalar", lut_block_scalar, lut_pair_block_scalar, fma_panel_scalar, cb_dot_scalar,
                               qc_lut_tables_scalar, NULL, NULL, NULL, NULL, 0,
                               qc_i8_gemm_scalar, 0, NULL, NULL};
const qc_isa *qc_isa_scalar(void) { return &kScalar; }
