/* AVX-512 (BW + VNNI) variant: the AVX2 inner loops, plus a codebook dot product on 64 bytes at a
 * time with vpdpbusd (activations biased to unsigned, the bias removed exactly with the sum of the
 * weights). Integer results equal the scalar ones exactly. */
#include "qc_kernels.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

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
    return &isa;
}
#else
const qc_isa *qc_isa_avx512(void) { return 0; }
#endif
