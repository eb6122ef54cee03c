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
rows_dot(const uint8_t *a, size_t as, const int8_t *wt, int nq, const int R, int32_t *acc, int acc_in,
         const qc_gemm_epi *epi, int64_t m0) {
    int32x4_t s[2][8];
    for (int r = 0; r < R; ++r)
        for (int i = 0; i < 8; ++i) s[r][i] = acc_in ? vld1q_s32(acc + r * 32 + 4 * i) : vdupq_n_s32(0);
    for (int q = 0; q < nq; ++q) {
        int8x16_t wv[8];
        for (int i = 0; i < 8; ++i) wv[i] = vld1q_s8(wt + q * 128 + 16 * i);
        for (int r = 0; r < R; ++r) {
            int32_t x;
            memcpy(&x, a + r * as + 4 * q, 4);
            const int8x16_t av = vreinterpretq_s8_s32(vdupq_n_s32(x));
            for (int i = 0; i < 8; ++i) s[r][i] = vdotq_s32(s[r][i], wv[i], av);
        }
    }
    for (int r = 0; r < R; ++r)
        for (int i = 0; i < 8; ++i) {
            if (!epi) {
                vst1q_s32(acc + r * 32 + 4 * i, s[r][i]);
                continue;
            }
            const int32x4_t v = vsubq_s32(s[r][i], vld1q_s32(epi->corr + 4 * i));
            const float32x4_t x = vmulq_f32(vcvtq_f32_s32(v), vld1q_f32(epi->scale + 4 * i));
            float *f = epi->facc + (m0 + r) * 32 + 4 * i;
            vst1q_f32(f, epi->first ? x : vaddq_f32(vld1q_f32(f), x));
        }
}

__attribute__((target("arch=armv8.2-a+dotprod"))) void qc_i8_gemm_neon_dot(const uint8_t *a, size_t as,
                                                                          const int8_t *wt, int nq, int64_t M,
                                                                          int small, int32_t *acc, int acc_in,
                                                                          const qc_gemm_epi *epi) {
    (void)small;
    int64_t m = 0;
    for (; m + 2 <= M; m += 2) rows_dot(a + m * as, as, wt, nq, 2, acc + m * 32, acc_in, epi, m);
    if (m < M) rows_dot(a + m * as, as, wt, nq, 1, acc + m * 32, acc_in, epi, m);
}
#else
typedef int qc_gemm_int8_neon_unused;
#endif
