/* NEON (AArch64) inner loops: LUT GEMV with vqtbl1q_s8, FMA panels, codebook lookups.
 * Integer parts exact; float epilogues in the scalar code's mul-then-add order. */
#include "qc_internal.h"

#if defined(__aarch64__)
#include <arm_neon.h>

static inline __attribute__((always_inline)) void lut_rows(const uint8_t *nib, const int8_t *tables,
                                                            size_t tab_stride, const float *scales, int G,
                                                            int S, const int R, float *acc) {
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    for (int g = 0; g < G; ++g) {
        int32x4_t i32[4][8];
        for (int r = 0; r < R; ++r)
            for (int j = 0; j < 8; ++j) i32[r][j] = vdupq_n_s32(0);
        for (int s0 = 0; s0 < S; s0 += 64) {
            const int s1 = S - s0 < 64 ? S : s0 + 64;
            int16x8_t a16[4][4];
            for (int r = 0; r < R; ++r)
                for (int j = 0; j < 4; ++j) a16[r][j] = vdupq_n_s16(0);
            for (int s = s0; s < s1; ++s) {
                const size_t q = (size_t)g * S + s;
                const uint8x16_t v0 = vld1q_u8(nib + q * 32), v1 = vld1q_u8(nib + q * 32 + 16);
                const uint8x16_t i00 = vandq_u8(v0, m4), i01 = vshrq_n_u8(v0, 4);
                const uint8x16_t i10 = vandq_u8(v1, m4), i11 = vshrq_n_u8(v1, 4);
                for (int r = 0; r < R; ++r) {
                    const int8_t *T = tables + r * tab_stride + q * 32;
                    const int8x16_t t0 = vld1q_s8(T), t1 = vld1q_s8(T + 16);
                    const int8x16_t a0 = vqtbl1q_s8(t0, i00), b0 = vqtbl1q_s8(t1, i01);
                    const int8x16_t a1 = vqtbl1q_s8(t0, i10), b1 = vqtbl1q_s8(t1, i11);
                    a16[r][0] = vaddq_s16(a16[r][0], vaddl_s8(vget_low_s8(a0), vget_low_s8(b0)));
                    a16[r][1] = vaddq_s16(a16[r][1], vaddl_high_s8(a0, b0));
                    a16[r][2] = vaddq_s16(a16[r][2], vaddl_s8(vget_low_s8(a1), vget_low_s8(b1)));
                    a16[r][3] = vaddq_s16(a16[r][3], vaddl_high_s8(a1, b1));
                }
            }
            for (int r = 0; r < R; ++r)
                for (int j = 0; j < 4; ++j) {
                    i32[r][2 * j] = vaddw_s16(i32[r][2 * j], vget_low_s16(a16[r][j]));
                    i32[r][2 * j + 1] = vaddw_high_s16(i32[r][2 * j + 1], a16[r][j]);
                }
        }
        for (int r = 0; r < R; ++r)
            for (int j = 0; j < 8; ++j) {
                float *a = acc + r * 32 + 4 * j;
                const float32x4_t f = vcvtq_f32_s32(i32[r][j]);
                vst1q_f32(a, vaddq_f32(vld1q_f32(a), vmulq_f32(f, vld1q_f32(scales + g * 32 + 4 * j))));
            }
    }
}

static void lut_block_neon(const uint8_t *nib, const int8_t *tables, size_t tab_stride, const float *scales, int G,
                           int S, int R, float *acc) {
    switch (R) {
    case 1: lut_rows(nib, tables, tab_stride, scales, G, S, 1, acc); break;
    case 2: lut_rows(nib, tables, tab_stride, scales, G, S, 2, acc); break;
    case 3: lut_rows(nib, tables, tab_stride, scales, G, S, 3, acc); break;
    default: lut_rows(nib, tables, tab_stride, scales, G, S, 4, acc); break;
    }
}

/* Paired planes: the two lookups of a column sit in adjacent bytes; vpadalq_s8 adds them and
 * accumulates in int16 in one instruction. */
static inline __attribute__((always_inline)) void lut_pair_rows(const uint8_t *nib, const int8_t *tables,
                                                                 size_t tab_stride, const float *scales, int G,
                                                                 int S, const int R, float *acc) {
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    for (int g = 0; g < G; ++g) {
        int32x4_t i32[4][8];
        for (int r = 0; r < R; ++r)
            for (int j = 0; j < 8; ++j) i32[r][j] = vdupq_n_s32(0);
        for (int s0 = 0; s0 < S; s0 += 128) { /* int16 sums: at most 128 * 254 */
            const int s1 = S - s0 < 128 ? S : s0 + 128;
            int16x8_t a16[4][4];
            for (int r = 0; r < R; ++r)
                for (int j = 0; j < 4; ++j) a16[r][j] = vdupq_n_s16(0);
            for (int s = s0; s < s1; ++s) {
                const size_t q = (size_t)g * S + s;
                const uint8x16_t v0 = vld1q_u8(nib + q * 32), v1 = vld1q_u8(nib + q * 32 + 16);
                const uint8x16_t i0 = vandq_u8(v0, m4), i1 = vandq_u8(v1, m4);
                const uint8x16_t i2 = vshrq_n_u8(v0, 4), i3 = vshrq_n_u8(v1, 4);
                for (int r = 0; r < R; ++r) {
                    const int8x16_t t = vld1q_s8(tables + r * tab_stride + q * 16);
                    a16[r][0] = vpadalq_s8(a16[r][0], vqtbl1q_s8(t, i0));
                    a16[r][1] = vpadalq_s8(a16[r][1], vqtbl1q_s8(t, i1));
                    a16[r][2] = vpadalq_s8(a16[r][2], vqtbl1q_s8(t, i2));
                    a16[r][3] = vpadalq_s8(a16[r][3], vqtbl1q_s8(t, i3));
                }
            }
            for (int r = 0; r < R; ++r)
                for (int j = 0; j < 4; ++j) {
                    i32[r][2 * j] = vaddw_s16(i32[r][2 * j], vget_low_s16(a16[r][j]));
                    i32[r][2 * j + 1] = vaddw_high_s16(i32[r][2 * j + 1], a16[r][j]);
                }
        }
        for (int r = 0; r < R; ++r)
            for (int j = 0; j < 8; ++j) {
                float *a = acc + r * 32 + 4 * j;
                const float32x4_t f = vcvtq_f32_s32(i32[r][j]);
                vst1q_f32(a, vaddq_f32(vld1q_f32(a), vmulq_f32(f, vld1q_f32(scales + g * 32 + 4 * j))));
            }
    }
}

static void lut_pair_block_neon(const uint8_t *nib, const int8_t *tables, size_t tab_stride, const float *scales,
                                int G, int S, int R, float *acc) {
    switch (R) {
    case 1: lut_pair_rows(nib, tables, tab_stride, scales, G, S, 1, acc); break;
    case 2: lut_pair_rows(nib, tables, tab_stride, scales, G, S, 2, acc); break;
    case 3: lut_pair_rows(nib, tables, tab_stride, scales, G, S, 3, acc); break;
    default: lut_pair_rows(nib, tables, tab_stride, scales, G, S, 4, acc); break;
    }
}

static void fma_panel_neon(int M, const float *A, size_t lda, const float *panel, int kb, float *Y, size_t ldy,
                           int nc) {
    if (nc < QC_FMA_COLS) {
        for (int m = 0; m < M; ++m)
            for (int k = 0; k < kb; ++k)
                for (int c = 0; c < nc; ++c)
                    Y[m * ldy + c] = Y[m * ldy + c] + A[m * lda + k] * panel[k * QC_FMA_COLS + c];
        return;
    }
    for (int m = 0; m < M; ++m) {
        float *y = Y + (size_t)m * ldy;
        float32x4_t a0 = vld1q_f32(y), a1 = vld1q_f32(y + 4), a2 = vld1q_f32(y + 8), a3 = vld1q_f32(y + 12);
        for (int k = 0; k < kb; ++k) {
            const float av = A[(size_t)m * lda + k];
            const float *p = panel + (size_t)k * 16;
            a0 = vfmaq_n_f32(a0, vld1q_f32(p), av);
            a1 = vfmaq_n_f32(a1, vld1q_f32(p + 4), av);
            a2 = vfmaq_n_f32(a2, vld1q_f32(p + 8), av);
            a3 = vfmaq_n_f32(a3, vld1q_f32(p + 12), av);
        }
        vst1q_f32(y, a0); vst1q_f32(y + 4, a1); vst1q_f32(y + 8, a2); vst1q_f32(y + 12, a3);
    }
}

static void cb_dot_neon(const uint8_t *nib0, const int8_t *cb0, const int32_t *wsum, const int32_t *asum, int NC, const int8_t *A,
                        size_t a_stride, int kp, int R, int32_t *out) {
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    for (int c = 0; c < NC; ++c) {
        const uint8_t *nib = nib0 + (size_t)c * 64;
        const int8x16_t cb = vld1q_s8(cb0 + 16 * c);
        int32x4_t acc[4] = {vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0)};
        for (int t = 0; t < kp / 128; ++t)
            for (int i = 0; i < 4; ++i) { /* 16 bytes: k = 128t + 16i + j (low), + 64 (high) */
                const uint8x16_t v = vld1q_u8(nib + 512 * t + 16 * i);
                const int8x16_t w0 = vqtbl1q_s8(cb, vandq_u8(v, m4)), w1 = vqtbl1q_s8(cb, vshrq_n_u8(v, 4));
                for (int r = 0; r < R; ++r) {
                    const int8_t *a = A + (size_t)r * a_stride + 128 * t + 16 * i;
                    const int8x16_t a0 = vld1q_s8(a), a1 = vld1q_s8(a + 64);
                    int16x8_t p0 = vmull_s8(vget_low_s8(w0), vget_low_s8(a0));
                    p0 = vmlal_high_s8(p0, w0, a0);
                    int16x8_t p1 = vmull_s8(vget_low_s8(w1), vget_low_s8(a1));
                    p1 = vmlal_high_s8(p1, w1, a1);
                    acc[r] = vpadalq_s16(acc[r], p0);
                    acc[r] = vpadalq_s16(acc[r], p1);
                }
            }
        for (int r = 0; r < R; ++r) out[r * 8 + c] = vaddvq_s32(acc[r]);
    }
}

/* Q tables of 16 signed 4-sums (qc_isa.lut_tables), the scalar loop's numbers: entry i = 4h + l is
 * lo[l] + hi[h] with lo = (+-x0) + (+-x1), hi = (+-x2) + (+-x3) (sign by bit: the negation is exact,
 * the adds in the scalar order), times inv, rounded to nearest even (fcvtns, as lrintf), clamped to
 * +-127. */
static void lut_tables_neon(const float *av, int64_t Q, float inv, int8_t *T) {
    static const float s0[4] = {-1.f, 1.f, -1.f, 1.f}, s1[4] = {-1.f, -1.f, 1.f, 1.f};
    const float32x4_t vs0 = vld1q_f32(s0), vs1 = vld1q_f32(s1);
    const int8x16_t lim = vdupq_n_s8(-127);
    for (int64_t q = 0; q < Q; ++q) {
        const float32x4_t x = vld1q_f32(av + q * 4);
        const float32x4_t lo = vaddq_f32(vmulq_laneq_f32(vs0, x, 0), vmulq_laneq_f32(vs1, x, 1));
        const float32x4_t hi = vaddq_f32(vmulq_laneq_f32(vs0, x, 2), vmulq_laneq_f32(vs1, x, 3));
        int32x4_t v[4];
        for (int h = 0; h < 4; ++h) {
            const float32x4_t hh = h == 0 ? vdupq_laneq_f32(hi, 0) : h == 1 ? vdupq_laneq_f32(hi, 1)
                                 : h == 2 ? vdupq_laneq_f32(hi, 2) : vdupq_laneq_f32(hi, 3);
            v[h] = vcvtnq_s32_f32(vmulq_n_f32(vaddq_f32(lo, hh), inv));
        }
        const int16x8_t p01 = vcombine_s16(vqmovn_s32(v[0]), vqmovn_s32(v[1]));
        const int16x8_t p23 = vcombine_s16(vqmovn_s32(v[2]), vqmovn_s32(v[3]));
        vst1q_s8(T + q * 16, vmaxq_s8(vcombine_s8(vqmovn_s16(p01), vqmovn_s16(p23)), lim));
    }
}

/* kNeonDot: the same with the batched int8 path's sdot kernel, where the CPU has the extension */
static const qc_isa kNeon = {"neon", lut_block_neon, lut_pair_block_neon, fma_panel_neon, cb_dot_neon,
                             lut_tables_neon, NULL, NULL, NULL, NULL, 0, NULL, 0, NULL, NULL};
static const qc_isa kNeonDot = {"neon", lut_block_neon, lut_pair_block_neon, fma_panel_neon, cb_dot_neon,
                                lut_tables_neon, NULL, NULL, NULL, NULL, 0, qc_i8_gemm_neon_dot, 0, NULL, NULL};
const qc_isa *qc_isa_neon(void) { return qc_neon_has_dotprod() ? &kNeonDot : &kNeon; }
#else
const qc_isa *qc_isa_neon(void) { return 0; }
#endif
