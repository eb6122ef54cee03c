/* AVX2 + FMA inner loops: LUT GEMV with _mm256_shuffle_epi8 on int8 tables, FMA panels,
 * codebook lookups with pshufb + maddubs. Integer parts are exact, float epilogues use the same
 * mul-then-add order as the scalar code, so the int8 paths match scalar bit for bit. */
#include "qc_kernels.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

static inline __attribute__((always_inline)) void lut_rows(const uint8_t *nib, const int8_t *tables,
                                                            size_t tab_stride, const float *scales, int G,
                                                            int S, const int R, float *acc) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi8(1);
    for (int g = 0; g < G; ++g) {
        __m256i i32[4][4];
        for (int r = 0; r < R; ++r)
            for (int j = 0; j < 4; ++j) i32[r][j] = _mm256_setzero_si256();
        for (int s0 = 0; s0 < S; s0 += 64) {
            const int s1 = S - s0 < 64 ? S : s0 + 64;
            __m256i lo[4], hi[4];
            for (int r = 0; r < R; ++r) lo[r] = hi[r] = _mm256_setzero_si256();
            for (int s = s0; s < s1; ++s) {
                const size_t q = (size_t)g * S + s;
                const __m256i v = _mm256_loadu_si256((const __m256i *)(nib + q * 32));
                const __m256i ix0 = _mm256_and_si256(v, m4);
                const __m256i ix1 = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                for (int r = 0; r < R; ++r) {
                    const int8_t *T = tables + r * tab_stride + q * 32;
                    const __m256i t0 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)T));
                    const __m256i t1 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(T + 16)));
                    const __m256i r0 = _mm256_shuffle_epi8(t0, ix0), r1 = _mm256_shuffle_epi8(t1, ix1);
                    lo[r] = _mm256_add_epi16(lo[r], _mm256_maddubs_epi16(ones, _mm256_unpacklo_epi8(r0, r1)));
                    hi[r] = _mm256_add_epi16(hi[r], _mm256_maddubs_epi16(ones, _mm256_unpackhi_epi8(r0, r1)));
                }
            }
            for (int r = 0; r < R; ++r) {
                i32[r][0] = _mm256_add_epi32(i32[r][0], _mm256_cvtepi16_epi32(_mm256_castsi256_si128(lo[r])));
                i32[r][1] = _mm256_add_epi32(i32[r][1], _mm256_cvtepi16_epi32(_mm256_castsi256_si128(hi[r])));
                i32[r][2] = _mm256_add_epi32(i32[r][2], _mm256_cvtepi16_epi32(_mm256_extracti128_si256(lo[r], 1)));
                i32[r][3] = _mm256_add_epi32(i32[r][3], _mm256_cvtepi16_epi32(_mm256_extracti128_si256(hi[r], 1)));
            }
        }
        for (int r = 0; r < R; ++r)
            for (int j = 0; j < 4; ++j) {
                const __m256 f = _mm256_cvtepi32_ps(i32[r][j]);
                const __m256 sc = _mm256_loadu_ps(scales + g * 32 + 8 * j);
                float *a = acc + r * 32 + 8 * j;
                _mm256_storeu_ps(a, _mm256_add_ps(_mm256_loadu_ps(a), _mm256_mul_ps(f, sc)));
            }
    }
}

static void lut_block_avx2(const uint8_t *nib, const int8_t *tables, size_t tab_stride, const float *scales, int G,
                           int S, int R, float *acc) {
    switch (R) {
    case 1: lut_rows(nib, tables, tab_stride, scales, G, S, 1, acc); break;
    case 2: lut_rows(nib, tables, tab_stride, scales, G, S, 2, acc); break;
    case 3: lut_rows(nib, tables, tab_stride, scales, G, S, 3, acc); break;
    default: lut_rows(nib, tables, tab_stride, scales, G, S, 4, acc); break;
    }
}

static void fma_panel_avx2(int M, const float *A, size_t lda, const float *panel, int kb, float *Y, size_t ldy,
                           int nc) {
    if (nc < QC_FMA_COLS) { /* ragged edge: plain loop */
        for (int m = 0; m < M; ++m)
            for (int k = 0; k < kb; ++k)
                for (int c = 0; c < nc; ++c)
                    Y[m * ldy + c] = Y[m * ldy + c] + A[m * lda + k] * panel[k * QC_FMA_COLS + c];
        return;
    }
    int m = 0;
    for (; m + 4 <= M; m += 4) {
        __m256 acc[4][2];
        for (int r = 0; r < 4; ++r) {
            acc[r][0] = _mm256_loadu_ps(Y + (m + r) * ldy);
            acc[r][1] = _mm256_loadu_ps(Y + (m + r) * ldy + 8);
        }
        for (int k = 0; k < kb; ++k) {
            const __m256 p0 = _mm256_loadu_ps(panel + k * 16), p1 = _mm256_loadu_ps(panel + k * 16 + 8);
            for (int r = 0; r < 4; ++r) {
                const __m256 a = _mm256_broadcast_ss(A + (m + r) * lda + k);
                acc[r][0] = _mm256_fmadd_ps(a, p0, acc[r][0]);
                acc[r][1] = _mm256_fmadd_ps(a, p1, acc[r][1]);
            }
        }
        for (int r = 0; r < 4; ++r) {
            _mm256_storeu_ps(Y + (m + r) * ldy, acc[r][0]);
            _mm256_storeu_ps(Y + (m + r) * ldy + 8, acc[r][1]);
        }
    }
    for (; m < M; ++m) {
        __m256 a0 = _mm256_loadu_ps(Y + m * ldy), a1 = _mm256_loadu_ps(Y + m * ldy + 8);
        for (int k = 0; k < kb; ++k) {
            const __m256 a = _mm256_broadcast_ss(A + m * lda + k);
            a0 = _mm256_fmadd_ps(a, _mm256_loadu_ps(panel + k * 16), a0);
            a1 = _mm256_fmadd_ps(a, _mm256_loadu_ps(panel + k * 16 + 8), a1);
        }
        _mm256_storeu_ps(Y + m * ldy, a0);
        _mm256_storeu_ps(Y + m * ldy + 8, a1);
    }
}

static int32_t cb_dot_avx2(const uint8_t *nib, const int8_t *cb16, const int8_t *a, int kp) {
    const __m128i m4 = _mm_set1_epi8(0x0F);
    const __m256i cb = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)cb16));
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc = _mm256_setzero_si256();
    for (int t = 0; t < kp / 32; ++t) {
        const __m128i v = _mm_loadu_si128((const __m128i *)(nib + 16 * t));
        const __m256i idx = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m4), _mm_and_si128(v, m4));
        const __m256i w = _mm256_shuffle_epi8(cb, idx);
        const __m256i av = _mm256_loadu_si256((const __m256i *)(a + 32 * t));
        const __m256i p = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(av, w));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, ones));
    }
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

static const qc_isa kAvx2 = {"avx2", lut_block_avx2, fma_panel_avx2, cb_dot_avx2};
const qc_isa *qc_isa_avx2(void) {
    return (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) ? &kAvx2 : 0;
}
#else
const qc_isa *qc_isa_avx2(void) { return 0; }
#endif
