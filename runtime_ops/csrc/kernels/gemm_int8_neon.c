/* NEON loops of the batched int8 path (gemm_int8.c): sdot (the Armv8.2 dot-product extension,
 * chosen at run time from HWCAP_ASIMDDP) on signed activations and weights, 2 rows x 32 columns
 * (16 accumulators of 4 columns). Without the extension the NEON variant has no batched path. */
#include "qc_internal.h"

#if defined(__aarch64__)
#include <arm_neon.h>
#include <string.h>
#if defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
#endif

int qc_neon_has_dotprod(void) {
#if defined(__linux__)
    return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#else
    return 0;
#endif
}

__attribute__((target("arch=armv8.2-a+dotprod"))) static inline __attribute__((always_inline)) void
rows_dot(const uint8_t *a, size_t as, const int8_t *wt, int nq, const int R, int32_t *out) {
    int32x4_t acc[2][8];
    for (int r = 0; r < R; ++r)
        for (int i = 0; i < 8; ++i) acc[r][i] = vdupq_n_s32(0);
    for (int q = 0; q < nq; ++q) {
        int8x16_t wv[8];
        for (int i = 0; i < 8; ++i) wv[i] = vld1q_s8(wt + q * 128 + 16 * i);
        for (int r = 0; r < R; ++r) {
            int32_t x;
            memcpy(&x, a + r * as + 4 * q, 4);
            const int8x16_t av = vreinterpretq_s8_s32(vdupq_n_s32(x));
            for (int i = 0; i < 8; ++i) acc[r][i] = vdotq_s32(acc[r][i], wv[i], av);
        }
    }
    for (int r = 0; r < R; ++r)
        for (int i = 0; i < 8; ++i) {
            int32_t *o = out + r * 32 + 4 * i;
            vst1q_s32(o, vaddq_s32(vld1q_s32(o), acc[r][i]));
        }
}

__attribute__((target("arch=armv8.2-a+dotprod"))) void qc_i8_gemm_neon_dot(const uint8_t *a, size_t as, const int8_t *wt, int nq,
                                                             int64_t M, int small, int32_t *out) {
    (void)small;
    int64_t m = 0;
    for (; m + 2 <= M; m += 2) rows_dot(a + m * as, as, wt, nq, 2, out + m * 32);
    if (m < M) rows_dot(a + m * as, as, wt, nq, 1, out + m * 32);
}
#else
typedef int qc_gemm_int8_neon_unused;
#endif
