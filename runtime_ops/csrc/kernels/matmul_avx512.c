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

static inline __attribute__((always_inline)) void cb_rows512(const uint8_t *nib, const int8_t *cb16,
                                                              const int8_t *a, size_t a_stride, int kp,
                                                              const int R, int32_t *out) {
    const __m512i cb = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)cb16));
    const __m512i m4 = _mm512_set1_epi8(0x0F), ones = _mm512_set1_epi8(1), bias = _mm512_set1_epi8((char)0x80);
    const __m512i order = _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0);
    /* two accumulator sets (even/odd 64-k steps) halve the vpdpbusd dependency chains */
    __m512i acc0[4], acc1[4], ws0 = _mm512_setzero_si512(), ws1 = _mm512_setzero_si512();
    for (int r = 0; r < R; ++r) acc0[r] = acc1[r] = _mm512_setzero_si512();
#define QC_CB_STEP(T, ACC, WS)                                                                            \
    do {                                                                                                  \
        const __m512i v = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(nib + 16 * (T)))); \
        const __m512i lo = _mm512_and_si512(v, m4), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);  \
        const __m512i w = _mm512_shuffle_epi8(cb, _mm512_permutex2var_epi64(lo, order, hi));              \
        WS = _mm512_dpbusd_epi32(WS, ones, w);                                                            \
        for (int r = 0; r < R; ++r)                                                                       \
            ACC[r] = _mm512_dpbusd_epi32(                                                                 \
                ACC[r], _mm512_xor_si512(_mm512_loadu_si512(a + r * a_stride + 32 * (T)), bias), w);     \
    } while (0)
    int t = 0;
    for (; t + 4 <= kp / 32; t += 4) { /* 2 x 64 k; each 64 k = nibbles of chunks t, t+1 */
        QC_CB_STEP(t, acc0, ws0);
        QC_CB_STEP(t + 2, acc1, ws1);
    }
    if (t + 2 <= kp / 32) {
        QC_CB_STEP(t, acc0, ws0);
        t += 2;
    }
#undef QC_CB_STEP
    int32_t tail[4] = {0, 0, 0, 0};
    if (t < kp / 32) { /* one 32-k chunk left */
        const __m128i v = _mm_loadu_si128((const __m128i *)(nib + 16 * t));
        const __m128i m4s = _mm_set1_epi8(0x0F);
        const __m256i idx = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m4s), _mm_and_si128(v, m4s));
        const __m256i w = _mm256_shuffle_epi8(_mm512_castsi512_si256(cb), idx);
        const __m256i ws = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8(1), w);
        for (int r = 0; r < R; ++r) {
            const __m256i av = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(a + r * a_stride + 32 * t)),
                                                _mm256_set1_epi8((char)0x80));
            const __m256i d = _mm256_sub_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), av, w),
                                               _mm256_slli_epi32(ws, 7));
            __m128i s = _mm_add_epi32(_mm256_castsi256_si128(d), _mm256_extracti128_si256(d, 1));
            s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
            s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
            tail[r] = _mm_cvtsi128_si32(s);
        }
    }
    const int32_t corr = _mm512_reduce_add_epi32(_mm512_add_epi32(ws0, ws1)) * 128;
    for (int r = 0; r < R; ++r) out[r] = _mm512_reduce_add_epi32(_mm512_add_epi32(acc0[r], acc1[r])) - corr + tail[r];
}

static void cb_dot_avx512(const uint8_t *nib, const int8_t *cb16, const int8_t *a, size_t a_stride, int kp, int R,
                          int32_t *out) {
    switch (R) {
    case 1: cb_rows512(nib, cb16, a, a_stride, kp, 1, out); break;
    case 2: cb_rows512(nib, cb16, a, a_stride, kp, 2, out); break;
    case 3: cb_rows512(nib, cb16, a, a_stride, kp, 3, out); break;
    default: cb_rows512(nib, cb16, a, a_stride, kp, 4, out); break;
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
