/* Int4MatMul at any M (qc_isa.i4_direct, AVX-512 VNNI; 1-4 rows at a time): int4_direct_avx2.c's method with
 * vpdpbusd, the 0..15 codes read unsigned and the activations signed, summed straight into int32
 * (no int16 stage). One 64-byte record (one kernel row of 32 columns) is one register: its low
 * nibbles are columns 0-7 and 16-23, its high nibbles 8-15 and 24-31 (lane order of the two
 * accumulators, put in column order at the group's end). Same integers, same
 * float epilogue as the tile path: equal bit for bit. */
#include "qc_internal.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#include <string.h>

/* software prefetch distance in the record stream: 8 KB ahead was 10-20% faster at M = 1 and
 * 24-28% at M = 16 than none (weights from memory or L3; 4 KB and 16 KB a little slower) */
enum { I4_PREFETCH = 8192 };

/* One kernel row (4 elements x 32 columns) of R activation rows into sum set u. */
static inline __attribute__((always_inline)) void dot_row(const uint8_t *p, const int8_t *a, size_t a_stride, const int R,
                                                          __m512i m0f, __m512i s[4][2][4], const int u) {
    const __m512i x = _mm512_loadu_si512((const void *)p);
    _mm_prefetch((const char *)p + I4_PREFETCH, _MM_HINT_T0);
    const __m512i lo = _mm512_and_si512(x, m0f), hi = _mm512_and_si512(_mm512_srli_epi16(x, 4), m0f);
    for (int r = 0; r < R; ++r) {
        int32_t four;
        memcpy(&four, a + r * a_stride, 4);
        const __m512i b = _mm512_set1_epi32(four);
        s[r][0][u] = _mm512_dpbusd_epi32(s[r][0][u], lo, b);
        s[r][1][u] = _mm512_dpbusd_epi32(s[r][1][u], hi, b);
    }
}

static inline __attribute__((always_inline)) void direct_rows(const uint8_t *rec, int64_t G, int64_t Lq, const int8_t *a,
                                                            size_t a_stride, const float *as, const int32_t *asum,
                                                            size_t s_stride, const float *scale, const uint8_t *zp,
                                                            const int R, const int U, float *facc) {
    const __m512i m0f = _mm512_set1_epi8(0x0F);
    /* accumulator lanes -> columns 0-15 and 16-31: lanes 0-7 of both, then lanes 8-15 of both */
    const __m512i to_lo = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
    const __m512i to_hi = _mm512_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
    __m512 f[4][2] = {{_mm512_setzero_ps()}}; /* (set at g = 0; initialized for the compiler) */
    for (int64_t g = 0; g < G; ++g) {
        const uint8_t *rg = rec + g * Lq * 64;
        const int8_t *ag = a + g * Lq * 4;
        /* U independent sums per accumulator (kernel rows q with q % U = u): with one row, two
         * dependency chains of vpdpbusd (latency ~5) left the op latency-bound */
        __m512i s[4][2][4];
        for (int r = 0; r < R; ++r)
            for (int u = 0; u < U; ++u) s[r][0][u] = s[r][1][u] = _mm512_setzero_si512();
        int64_t q = 0;
        for (; q + U <= Lq; q += U)
            for (int u = 0; u < U; ++u) dot_row(rg + (q + u) * 64, ag + (q + u) * 4, a_stride, R, m0f, s, u);
        for (; q < Lq; ++q) dot_row(rg + q * 64, ag + q * 4, a_stride, R, m0f, s, 0);
        for (int r = 0; r < R; ++r)
            for (int u = 1; u < U; ++u) {
                s[r][0][0] = _mm512_add_epi32(s[r][0][0], s[r][0][u]);
                s[r][1][0] = _mm512_add_epi32(s[r][1][0], s[r][1][u]);
            }
        /* the group's zero points and scales, columns in order, shared by the rows */
        const __m512i z[2] = {_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(zp + g * 32))),
                              _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(zp + g * 32 + 16)))};
        const __m512 sc[2] = {_mm512_loadu_ps(scale + g * 32), _mm512_loadu_ps(scale + g * 32 + 16)};
        for (int r = 0; r < R; ++r) {
            const __m512i zs = _mm512_set1_epi32(asum[r * s_stride + g]);
            const __m512 sa = _mm512_set1_ps(as[r * s_stride + g]);
            const __m512i n[2] = {_mm512_permutex2var_epi32(s[r][0][0], to_lo, s[r][1][0]),
                                  _mm512_permutex2var_epi32(s[r][0][0], to_hi, s[r][1][0])};
            for (int h = 0; h < 2; ++h) {
                const __m512i v = _mm512_sub_epi32(n[h], _mm512_mullo_epi32(z[h], zs));
                const __m512 x = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(v), sc[h]), sa);
                f[r][h] = g == 0 ? x : _mm512_add_ps(f[r][h], x);
            }
        }
    }
    for (int r = 0; r < R; ++r) {
        _mm512_storeu_ps(facc + r * 32, f[r][0]);
        _mm512_storeu_ps(facc + r * 32 + 16, f[r][1]);
    }
}

#define QC_DIRECT_R(R)                                                                                          \
    static void direct##R(const uint8_t *rec, int64_t G, int64_t Lq, const int8_t *a, size_t a_stride,        \
                        const float *as, const int32_t *asum, size_t s_stride, const float *scale,           \
                        const uint8_t *zp, float *facc) {                                                    \
        direct_rows(rec, G, Lq, a, a_stride, as, asum, s_stride, scale, zp, R, R == 1 ? 4 : R == 4 ? 1 : 2, facc);   \
    }
QC_DIRECT_R(1) QC_DIRECT_R(2) QC_DIRECT_R(3) QC_DIRECT_R(4)

void qc_i4_direct_avx512vnni(const uint8_t *rec, int64_t G, int64_t Lq, const int8_t *a, size_t a_stride,
                           const float *as, const int32_t *asum, size_t s_stride, const float *scale, const uint8_t *zp,
                           int64_t M, float *facc) {
    typedef void (*fn)(const uint8_t *, int64_t, int64_t, const int8_t *, size_t, const float *, const int32_t *,
                       size_t, const float *, const uint8_t *, float *);
    static const fn k[5] = {0, direct1, direct2, direct3, direct4};
    for (int64_t m = 0; m < M; m += 4) {
        const int r = (int)(M - m < 4 ? M - m : 4);
        k[r](rec, G, Lq, a + m * a_stride, a_stride, as + m * s_stride, asum + m * s_stride, s_stride, scale, zp,
             facc + m * 32);
    }
}
#endif
