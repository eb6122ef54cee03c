/* AVX-512 (BW + VNNI) variant: the AVX2 inner loops, plus a codebook dot product on 64 bytes at a
 * time with vpdpbusd (activations biased to unsigned, the bias removed exactly with the sum of the
 * weights). Integer results equal the scalar ones exactly. */
#include "qc_kernels.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

/* Paired-plane ternary LUT, two steps per 512-bit vector: lanes 0-1 hold step s (table T_s in
 * both), lanes 2-3 step s+1; the two halves are added when the int16 sums are flushed. */
static inline __attribute__((always_inline)) void lut_pair_rows512(const uint8_t *nib, const int8_t *tables,
                                                                    size_t tab_stride, const float *scales, int G,
                                                                    int S, const int R, float *acc) {
    const __m512i m4 = _mm512_set1_epi8(0x0F), ones = _mm512_set1_epi8(1);
    for (int g = 0; g < G; ++g) {
        __m256i i32[4][4];
        for (int r = 0; r < R; ++r)
            for (int j = 0; j < 4; ++j) i32[r][j] = _mm256_setzero_si256();
        for (int s0 = 0; s0 < S; s0 += 128) { /* int16 sums per half: at most 64 * 254 */
            const int s1 = S - s0 < 128 ? S : s0 + 128;
            __m512i lo[4], hi[4];
            for (int r = 0; r < R; ++r) lo[r] = hi[r] = _mm512_setzero_si512();
            const uint8_t *nb = nib + ((size_t)g * S + s0) * 32;
            const int8_t *tb = tables + ((size_t)g * S + s0) * 16;
            int s = s0;
            for (; s + 2 <= s1; s += 2, nb += 64, tb += 32) {
                const __m512i v = _mm512_loadu_si512(nb);
                const __m512i ixl = _mm512_and_si512(v, m4);
                const __m512i ixh = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
                for (int r = 0; r < R; ++r) {
                    const __m512i t2 = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(tb + r * tab_stride)));
                    const __m512i t = _mm512_shuffle_i64x2(t2, t2, 0x50); /* T_s, T_s, T_s+1, T_s+1 */
                    lo[r] = _mm512_add_epi16(lo[r], _mm512_maddubs_epi16(ones, _mm512_shuffle_epi8(t, ixl)));
                    hi[r] = _mm512_add_epi16(hi[r], _mm512_maddubs_epi16(ones, _mm512_shuffle_epi8(t, ixh)));
                }
            }
            if (s < s1) { /* odd step count: the last step alone in the low half */
                const __m512i v = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)nb));
                const __m512i ixl = _mm512_and_si512(v, m4);
                const __m512i ixh = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
                for (int r = 0; r < R; ++r) {
                    const __m512i t = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(tb + r * tab_stride)));
                    const __m512i keep = _mm512_maskz_mov_epi64(0x0F, ones);
                    lo[r] = _mm512_add_epi16(lo[r], _mm512_maddubs_epi16(keep, _mm512_shuffle_epi8(t, ixl)));
                    hi[r] = _mm512_add_epi16(hi[r], _mm512_maddubs_epi16(keep, _mm512_shuffle_epi8(t, ixh)));
                }
            }
            for (int r = 0; r < R; ++r) {
                const __m256i l = _mm256_add_epi16(_mm512_castsi512_si256(lo[r]), _mm512_extracti64x4_epi64(lo[r], 1));
                const __m256i h = _mm256_add_epi16(_mm512_castsi512_si256(hi[r]), _mm512_extracti64x4_epi64(hi[r], 1));
                i32[r][0] = _mm256_add_epi32(i32[r][0], _mm256_cvtepi16_epi32(_mm256_castsi256_si128(l)));
                i32[r][1] = _mm256_add_epi32(i32[r][1], _mm256_cvtepi16_epi32(_mm256_extracti128_si256(l, 1)));
                i32[r][2] = _mm256_add_epi32(i32[r][2], _mm256_cvtepi16_epi32(_mm256_castsi256_si128(h)));
                i32[r][3] = _mm256_add_epi32(i32[r][3], _mm256_cvtepi16_epi32(_mm256_extracti128_si256(h, 1)));
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

static void lut_pair_block_avx512(const uint8_t *nib, const int8_t *tables, size_t tab_stride, const float *scales,
                                  int G, int S, int R, float *acc) {
    switch (R) {
    case 1: lut_pair_rows512(nib, tables, tab_stride, scales, G, S, 1, acc); break;
    case 2: lut_pair_rows512(nib, tables, tab_stride, scales, G, S, 2, acc); break;
    case 3: lut_pair_rows512(nib, tables, tab_stride, scales, G, S, 3, acc); break;
    default: lut_pair_rows512(nib, tables, tab_stride, scales, G, S, 4, acc); break;
    }
}

/* 8 vectors of int32 partial sums -> their 8 totals (halve to 256 bits, then an hadd tree). */
static inline __m256i hsum8_512(const __m512i *t) {
    __m256i h[8];
    for (int c = 0; c < 8; ++c) h[c] = _mm256_add_epi32(_mm512_castsi512_si256(t[c]), _mm512_extracti64x4_epi64(t[c], 1));
    const __m256i a = _mm256_hadd_epi32(_mm256_hadd_epi32(h[0], h[1]), _mm256_hadd_epi32(h[2], h[3]));
    const __m256i b = _mm256_hadd_epi32(_mm256_hadd_epi32(h[4], h[5]), _mm256_hadd_epi32(h[6], h[7]));
    return _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20), _mm256_permute2x128_si256(a, b, 0x31));
}

/* 128 k per chunk: low nibbles index k .. k+63, high nibbles k+64 .. k+127. Activations are made
 * unsigned (a + 128, i.e. a ^ 0x80) for vpdpbusd; 128 * wsum removes the offset exactly (int32
 * arithmetic wraps, so the true sum comes out). */
static inline __attribute__((always_inline)) void cb_rows512(const uint8_t *nib0, const int8_t *cb0,
                                                              const int32_t *wsum, int NC, const int8_t *a,
                                                              size_t a_stride, int kp, const int R, int32_t *out) {
    const __m512i m4 = _mm512_set1_epi8(0x0F), bias = _mm512_set1_epi8((char)0x80);
    __m512i part[4][8];
    for (int c = 0; c < 8; c += 2) { /* two columns at a time: independent vpdpbusd chains */
        __m512i acc[2][4];
        for (int r = 0; r < R; ++r) acc[0][r] = acc[1][r] = _mm512_setzero_si512();
        if (c < NC) {
            const int c1 = c + 1 < NC ? c + 1 : c; /* a missing second column repeats the first, discarded */
            const uint8_t *nib[2] = {nib0 + (size_t)c * (kp / 2), nib0 + (size_t)c1 * (kp / 2)};
            const __m512i cb[2] = {_mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(cb0 + 16 * c))),
                                   _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(cb0 + 16 * c1)))};
            for (int t = 0; t < kp / 128; ++t) {
                __m512i al[4], ah[4];
                for (int r = 0; r < R; ++r) {
                    const int8_t *ar = a + r * a_stride + 128 * t;
                    al[r] = _mm512_xor_si512(_mm512_loadu_si512(ar), bias);
                    ah[r] = _mm512_xor_si512(_mm512_loadu_si512(ar + 64), bias);
                }
                for (int i = 0; i < 2; ++i) {
                    const __m512i v = _mm512_loadu_si512(nib[i] + 64 * t);
                    const __m512i wl = _mm512_shuffle_epi8(cb[i], _mm512_and_si512(v, m4));
                    const __m512i wh = _mm512_shuffle_epi8(cb[i], _mm512_and_si512(_mm512_srli_epi16(v, 4), m4));
                    for (int r = 0; r < R; ++r)
                        acc[i][r] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(acc[i][r], al[r], wl), ah[r], wh);
                }
            }
        }
        for (int r = 0; r < R; ++r) {
            part[r][c] = acc[0][r];
            part[r][c + 1] = acc[1][r];
        }
    }
    __m256i off = _mm256_setzero_si256();
    if (NC == 8) {
        off = _mm256_slli_epi32(_mm256_loadu_si256((const __m256i *)wsum), 7);
    } else {
        int32_t w8[8] = {0};
        for (int c = 0; c < NC; ++c) w8[c] = wsum[c];
        off = _mm256_slli_epi32(_mm256_loadu_si256((const __m256i *)w8), 7);
    }
    for (int r = 0; r < R; ++r) _mm256_storeu_si256((__m256i *)(out + 8 * r), _mm256_sub_epi32(hsum8_512(part[r]), off));
}

static void cb_dot_avx512(const uint8_t *nib, const int8_t *cb, const int32_t *wsum, int NC, const int8_t *a,
                          size_t a_stride, int kp, int R, int32_t *out) {
    switch (R) {
    case 1: cb_rows512(nib, cb, wsum, NC, a, a_stride, kp, 1, out); break;
    case 2: cb_rows512(nib, cb, wsum, NC, a, a_stride, kp, 2, out); break;
    case 3: cb_rows512(nib, cb, wsum, NC, a, a_stride, kp, 3, out); break;
    default: cb_rows512(nib, cb, wsum, NC, a, a_stride, kp, 4, out); break;
    }
}

const qc_isa *qc_isa_avx512(void) {
    static qc_isa isa;
    const qc_isa *base = qc_isa_avx2();
    if (!base || !__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
        !__builtin_cpu_supports("avx512vl") || !__builtin_cpu_supports("avx512vnni"))
        return 0;
    isa = *base;
    isa.name = "avx512";
    isa.cb_dot = cb_dot_avx512;
    isa.lut_pair_block = lut_pair_block_avx512;
    return &isa;
}
#else
const qc_isa *qc_isa_avx512(void) { return 0; }
#endif
