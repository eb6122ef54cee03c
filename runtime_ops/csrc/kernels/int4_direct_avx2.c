/* Int4MatMul for few rows (qc_isa.i4_direct, AVX2): the batched int8 path's numbers without its
 * decoded tile, 1 or 2 rows at a time. The packed records (prepack_int4: 64 bytes per kernel row of a 32-column block,
 * low nibbles of bytes 0-31 columns 0-7, high nibbles 8-15, bytes 32-63 columns 16-31) are split
 * into 0..15 codes in registers and multiplied unsigned (maddubs) by signed int8 activations, so
 * neither the decode to code - 8 nor the unsigned-activation correction is needed; the zero point
 * enters as z x the group's activation sum. s = sum(code x a) - z x asum is the same integer as the
 * tile path's sum((code - 8) x a) + (8 - z) x asum, and the float epilogue is the same, so the
 * results are equal bit for bit (kernel_test compares them to the scalar variant). */
#include "qc_internal.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#include <string.h>

/* software prefetch distance in the record stream: 8 KB ahead was 23-35% faster at M = 1 and
 * 15-21% at M = 4 than none (weights from memory or L3) */
enum { I4_PREFETCH = 8192 };

/* int16 partial sums per kernel-row chunk: |code x a| pairs <= 2 x 15 x 127 = 3810, 8 of them 30480 */
enum { I4_CHUNK_Q = 8 };

static inline __attribute__((always_inline)) void direct_rows(const uint8_t *rec, int64_t G, int64_t Lq, const int8_t *a,
                                                            size_t a_stride, const float *as, const int32_t *asum,
                                                            size_t s_stride, const float *scale, const uint8_t *zp,
                                                            const int R, float *facc) {
    const __m256i m0f = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    int32_t isum[2 * 32] __attribute__((aligned(32))) = {0}; /* (written before read; initialized for the compiler) */
    for (int64_t g = 0; g < G; ++g) {
        const uint8_t *rg = rec + g * Lq * 64;
        const int8_t *ag = a + g * Lq * 4;
        for (int64_t q0 = 0; q0 < Lq; q0 += I4_CHUNK_Q) {
            const int nq = (int)(Lq - q0 < I4_CHUNK_Q ? Lq - q0 : I4_CHUNK_Q);
            __m256i s[2][4];
            for (int r = 0; r < R; ++r)
                for (int i = 0; i < 4; ++i) s[r][i] = _mm256_setzero_si256();
            for (int q = 0; q < nq; ++q) {
                const uint8_t *p = rg + (q0 + q) * 64;
                const __m256i x0 = _mm256_loadu_si256((const __m256i *)p);
                const __m256i x1 = _mm256_loadu_si256((const __m256i *)(p + 32));
                _mm_prefetch((const char *)p + I4_PREFETCH, _MM_HINT_T0);
                const __m256i w[4] = {_mm256_and_si256(x0, m0f), _mm256_and_si256(_mm256_srli_epi16(x0, 4), m0f),
                                      _mm256_and_si256(x1, m0f), _mm256_and_si256(_mm256_srli_epi16(x1, 4), m0f)};
                for (int r = 0; r < R; ++r) {
                    int32_t four;
                    memcpy(&four, ag + r * a_stride + (q0 + q) * 4, 4);
                    const __m256i b = _mm256_set1_epi32(four);
                    for (int i = 0; i < 4; ++i) s[r][i] = _mm256_add_epi16(s[r][i], _mm256_maddubs_epi16(w[i], b));
                }
            }
            const int last = q0 + I4_CHUNK_Q >= Lq;
            for (int r = 0; r < R; ++r) {
                const float sa = as[r * s_stride + g];
                const __m256i zs = _mm256_set1_epi32(asum[r * s_stride + g]);
                for (int i = 0; i < 4; ++i) {
                    __m256i t = _mm256_madd_epi16(s[r][i], ones);
                    int32_t *ip = isum + r * 32 + 8 * i;
                    if (q0 > 0) t = _mm256_add_epi32(t, _mm256_load_si256((const __m256i *)ip));
                    if (!last) {
                        _mm256_store_si256((__m256i *)ip, t);
                        continue;
                    }
                    const __m256i z = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(zp + g * 32 + 8 * i)));
                    const __m256i v = _mm256_sub_epi32(t, _mm256_mullo_epi32(z, zs));
                    const __m256 x = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(v), _mm256_loadu_ps(scale + g * 32 + 8 * i)),
                                                   _mm256_set1_ps(sa));
                    float *f = facc + r * 32 + 8 * i;
                    _mm256_storeu_ps(f, g == 0 ? x : _mm256_add_ps(_mm256_loadu_ps(f), x));
                }
            }
        }
    }
}

static void direct1(const uint8_t *rec, int64_t G, int64_t Lq, const int8_t *a, size_t a_stride, const float *as,
                  const int32_t *asum, size_t s_stride, const float *scale, const uint8_t *zp, float *facc) {
    direct_rows(rec, G, Lq, a, a_stride, as, asum, s_stride, scale, zp, 1, facc);
}

static void direct2(const uint8_t *rec, int64_t G, int64_t Lq, const int8_t *a, size_t a_stride, const float *as,
                  const int32_t *asum, size_t s_stride, const float *scale, const uint8_t *zp, float *facc) {
    direct_rows(rec, G, Lq, a, a_stride, as, asum, s_stride, scale, zp, 2, facc);
}

void qc_i4_direct_avx2(const uint8_t *rec, int64_t G, int64_t Lq, const int8_t *a, size_t a_stride, const float *as,
                     const int32_t *asum, size_t s_stride, const float *scale, const uint8_t *zp, int64_t M,
                     float *facc) {
    for (int64_t m = 0; m < M; m += 2) {
        if (M - m >= 2)
            direct2(rec, G, Lq, a + m * a_stride, a_stride, as + m * s_stride, asum + m * s_stride, s_stride, scale, zp,
                  facc + m * 32);
        else
            direct1(rec, G, Lq, a + m * a_stride, a_stride, as + m * s_stride, asum + m * s_stride, s_stride, scale, zp,
                  facc + m * 32);
    }
}
#endif
