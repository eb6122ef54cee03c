/* AVX-512 (BW + VNNI) variant: the AVX2 inner loops, plus a codebook dot product on 64 bytes at a
 * time with vpdpbusd (activations biased to unsigned, the bias removed exactly with the sum of the
 * weights). Integer results equal the scalar ones exactly. */
#include "qc_internal.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#ifndef QC_PF
#define QC_PF 4096 /* software prefetch distance on the LUT index stream (bytes) */
#endif

/* VBMI variant of the AVX2 paired-plane loop: vpermb on a 32-byte table [T, T] reads only the low
 * 5 bits of each index byte, so with the table duplicated the low nibble needs no mask and the
 * high nibble only a shift (bits 4-7 after the shift are ignored or select the same copy):
 * 6 vector ops per 32 columns x 4 elements instead of 8. Same integer sums as AVX2. */
__attribute__((target("avx512vbmi,avx512vl,avx512bw")))
static inline __attribute__((always_inline)) void lut_pair_rows_vbmi(const uint8_t *nib, const int8_t *tables,
                                                                      size_t tab_stride, const float *scales, int G,
                                                                      int S, const int R, float *acc, const int pf,
                                                                      const int binary) {
    /* binary (paired layout, qc_isa.lut_binary_pair): the 32-byte table [T_2s, T_2s+1] as stored,
     * odd bytes select its upper half through index bit 4: (nibble & 15) | 16 in one vpternlogd */
    const __m256i ones = _mm256_set1_epi8(1), m4 = _mm256_set1_epi8(0x0F),
                  sel = _mm256_set1_epi16((short)0x1000);
    const int tstep = binary ? 32 : 16;
    for (int g = 0; g < G; ++g) {
        __m256i i32[4][4];
        for (int r = 0; r < R; ++r)
            for (int j = 0; j < 4; ++j) i32[r][j] = _mm256_setzero_si256();
        for (int s0 = 0; s0 < S; s0 += 128) { /* int16 sums: at most 128 * 254 */
            const int s1 = S - s0 < 128 ? S : s0 + 128;
            __m256i lo[4], hi[4];
            for (int r = 0; r < R; ++r) lo[r] = hi[r] = _mm256_setzero_si256();
            const uint8_t *nb = nib + ((size_t)g * S + s0) * 32;
            const int8_t *tb = tables + ((size_t)g * S + s0) * tstep;
            for (int s = s0; s < s1; ++s, nb += 32, tb += tstep) {
                if (pf) _mm_prefetch((const char *)(nb + QC_PF), _MM_HINT_T0);
                __m256i v = _mm256_loadu_si256((const __m256i *)nb);
                __m256i vh = _mm256_srli_epi16(v, 4);
                if (binary) {
                    v = _mm256_ternarylogic_epi32(v, m4, sel, 0xEA);   /* (v & m4) | sel */
                    vh = _mm256_ternarylogic_epi32(vh, m4, sel, 0xEA);
                }
                for (int r = 0; r < R; ++r) {
                    const __m256i t =
                        binary ? _mm256_loadu_si256((const __m256i *)(tb + r * tab_stride))
                               : _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(tb + r * tab_stride)));
                    lo[r] = _mm256_add_epi16(lo[r], _mm256_maddubs_epi16(ones, _mm256_permutexvar_epi8(v, t)));
                    hi[r] = _mm256_add_epi16(hi[r], _mm256_maddubs_epi16(ones, _mm256_permutexvar_epi8(vh, t)));
                }
            }
            for (int r = 0; r < R; ++r) {
                i32[r][0] = _mm256_add_epi32(i32[r][0], _mm256_cvtepi16_epi32(_mm256_castsi256_si128(lo[r])));
                i32[r][1] = _mm256_add_epi32(i32[r][1], _mm256_cvtepi16_epi32(_mm256_extracti128_si256(lo[r], 1)));
                i32[r][2] = _mm256_add_epi32(i32[r][2], _mm256_cvtepi16_epi32(_mm256_castsi256_si128(hi[r])));
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

#define VBMI_TARGET __attribute__((target("avx512vbmi,avx512vl,avx512bw")))
QC_LUT_ENTRY(VBMI_TARGET, lut_pair_block_vbmi, lut_pair_rows_vbmi, 0, 0)
QC_LUT_ENTRY(VBMI_TARGET, lut_pair_block_vbmi_pf, lut_pair_rows_vbmi, 1, 0)
QC_LUT_ENTRY(VBMI_TARGET, lut_block_vbmi, lut_pair_rows_vbmi, 0, 1)
QC_LUT_ENTRY(VBMI_TARGET, lut_block_vbmi_pf, lut_pair_rows_vbmi, 1, 1)

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
                                                              const int32_t *wsum, const int32_t *asum, int NC, const int8_t *a,
                                                              size_t a_stride, int kp, const int R, int32_t *out) {
    /* NCOL columns at a time, low and high halves in separate accumulators: 2 * NCOL * R
     * independent vpdpbusd chains (its latency, not its throughput, bounded the former 2 chains) */
    enum { NCOL_MAX = 4 };
    const int NCOL = R == 1 ? 4 : 2;
    const int H = R <= 2 ? 2 : 1; /* separate low / high chains while there are few rows */
    const __m512i m4 = _mm512_set1_epi8(0x0F), bias = _mm512_set1_epi8((char)0x80);
    __m512i part[4][8];
    for (int c = 0; c < 8; c += NCOL) {
        __m512i acc[NCOL_MAX][2][4];
        for (int i = 0; i < NCOL; ++i)
            for (int r = 0; r < R; ++r) acc[i][0][r] = acc[i][1][r] = _mm512_setzero_si512();
        if (c < NC) {
            const uint8_t *nib[NCOL_MAX];
            __m512i cb[NCOL_MAX];
            for (int i = 0; i < NCOL; ++i) { /* missing columns repeat the last one, discarded */
                const int ci = c + i < NC ? c + i : NC - 1;
                nib[i] = nib0 + (size_t)ci * 64;
                cb[i] = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(cb0 + 16 * ci)));
            }
            for (int t = 0; t < kp / 128; ++t) {
                if (c == 0) /* the first pass fetches the chunk's other columns for the next passes */
                    for (int j = NCOL; j < 8; ++j) _mm_prefetch((const char *)(nib0 + 512 * t + 64 * j), _MM_HINT_T0);
                __m512i al[4], ah[4];
                for (int r = 0; r < R; ++r) {
                    const int8_t *ar = a + r * a_stride + 128 * t;
                    al[r] = _mm512_xor_si512(_mm512_loadu_si512(ar), bias);
                    ah[r] = _mm512_xor_si512(_mm512_loadu_si512(ar + 64), bias);
                }
                for (int i = 0; i < NCOL; ++i) {
                    const __m512i v = _mm512_loadu_si512(nib[i] + 512 * t);
                    const __m512i wl = _mm512_shuffle_epi8(cb[i], _mm512_and_si512(v, m4));
                    const __m512i wh = _mm512_shuffle_epi8(cb[i], _mm512_and_si512(_mm512_srli_epi16(v, 4), m4));
                    for (int r = 0; r < R; ++r) {
                        acc[i][0][r] = _mm512_dpbusd_epi32(acc[i][0][r], al[r], wl);
                        acc[i][H - 1][r] = _mm512_dpbusd_epi32(acc[i][H - 1][r], ah[r], wh);
                    }
                }
            }
        }
        for (int i = 0; i < NCOL; ++i)
            for (int r = 0; r < R; ++r) part[r][c + i] = _mm512_add_epi32(acc[i][0][r], acc[i][1][r]);
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

/* VBMI: NCOL columns at a time (8 for one row: with the columns interleaved by 8 the indices are
 * one sequential stream), vpdpbusd chains split by column and nibble half (the chain latency, not
 * the throughput, bounded a 2-chain loop). Centroids are biased to unsigned (c ^ 0x80 = c + 128)
 * and the activations stay signed, so the offset is 128 * asum (the row sums, computed once per
 * run); vpermb reads 6 index bits and the table holds 4 copies of the 16 centroids, so neither
 * nibble needs a mask. Exact int32 sums: equal to the scalar ones. */
__attribute__((target("avx512vbmi"))) static inline __attribute__((always_inline)) void
cb_rows_vbmi(const uint8_t *nib0, const int8_t *cb0, const int32_t *asum, int NC, const int8_t *a, size_t a_stride,
             int kp, const int R, int32_t *out) {
    enum { NCOL_MAX = 8 };
    const int NCOL = R == 1 ? 8 : R == 2 ? 4 : 2;
    const int H = R <= 2 ? 2 : 1; /* separate low / high chains while there are few rows */
    const int T = kp / 128;
    const __m512i bias = _mm512_set1_epi8((char)0x80);
    __m512i part[4][8];
    for (int c = 0; c < 8; c += NCOL) {
        __m512i acc[NCOL_MAX][2][4];
        for (int i = 0; i < NCOL; ++i)
            for (int r = 0; r < R; ++r) acc[i][0][r] = acc[i][1][r] = _mm512_setzero_si512();
        if (c < NC) {
            __m512i cb[NCOL_MAX];
            for (int i = 0; i < NCOL; ++i) /* columns past NC: their (zero) padding slots, discarded */
                cb[i] = _mm512_xor_si512(_mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(cb0 + 16 * (c + i < NC ? c + i : c)))), bias);
            const uint8_t *nb = nib0 + (size_t)c * 64;
            for (int t = 0; t < T; ++t, nb += 512) {
                if (NCOL < 8 && c == 0) /* the first pass fetches the chunk's other columns for the next passes */
                    for (int j = NCOL; j < 8; ++j) _mm_prefetch((const char *)(nb + 64 * j), _MM_HINT_T0);
                __m512i al[4], ah[4];
                for (int r = 0; r < R; ++r) {
                    al[r] = _mm512_loadu_si512(a + r * a_stride + 128 * t);
                    ah[r] = _mm512_loadu_si512(a + r * a_stride + 128 * t + 64);
                }
                for (int i = 0; i < NCOL; ++i) {
                                        const __m512i v = _mm512_loadu_si512(nb + 64 * i);
                    const __m512i wl = _mm512_permutexvar_epi8(v, cb[i]);
                    const __m512i wh = _mm512_permutexvar_epi8(_mm512_srli_epi16(v, 4), cb[i]);
                    for (int r = 0; r < R; ++r) {
                        acc[i][0][r] = _mm512_dpbusd_epi32(acc[i][0][r], wl, al[r]);
                        acc[i][H - 1][r] = _mm512_dpbusd_epi32(acc[i][H - 1][r], wh, ah[r]);
                    }
                }
            }
        }
        for (int i = 0; i < NCOL; ++i)
            for (int r = 0; r < R; ++r) part[r][c + i] = _mm512_add_epi32(acc[i][0][r], acc[i][1][r]);
    }
    for (int r = 0; r < R; ++r)
        _mm256_storeu_si256((__m256i *)(out + 8 * r),
                            _mm256_sub_epi32(hsum8_512(part[r]), _mm256_set1_epi32((int32_t)((uint32_t)asum[r] << 7))));
}

static void cb_dot_avx512(const uint8_t *nib, const int8_t *cb, const int32_t *wsum, const int32_t *asum, int NC,
                          const int8_t *a, size_t a_stride, int kp, int R, int32_t *out);

__attribute__((target("avx512vbmi"))) static void cb_dot_vbmi(const uint8_t *nib, const int8_t *cb, const int32_t *wsum, const int32_t *asum, int NC, const int8_t *a,
                        size_t a_stride, int kp, int R, int32_t *out) {
    if (R == 1) /* several rows: the lookups are shared and cb_rows512 measured as fast or faster */
        cb_rows_vbmi(nib, cb, asum, NC, a, a_stride, kp, 1, out);
    else
        cb_dot_avx512(nib, cb, wsum, asum, NC, a, a_stride, kp, R, out);
}

static void cb_dot_avx512(const uint8_t *nib, const int8_t *cb, const int32_t *wsum, const int32_t *asum, int NC, const int8_t *a,
                          size_t a_stride, int kp, int R, int32_t *out) {
    switch (R) {
    case 1: cb_rows512(nib, cb, wsum, asum, NC, a, a_stride, kp, 1, out); break;
    case 2: cb_rows512(nib, cb, wsum, asum, NC, a, a_stride, kp, 2, out); break;
    case 3: cb_rows512(nib, cb, wsum, asum, NC, a, a_stride, kp, 3, out); break;
    default: cb_rows512(nib, cb, wsum, asum, NC, a, a_stride, kp, 4, out); break;
    }
}

/* vbmi: vpermb loops where the CPU has AVX512_VBMI (the ternary LUT and the one-row codebook dot);
 * without it the AVX2 ternary loop (512-bit versions measured no faster: Zen 4 splits them) and the
 * pshufb codebook dot. */
static const qc_isa *avx512_isa(int vbmi) {
    static qc_isa isa[2];
    const qc_isa *base = qc_isa_avx2();
    if (!base || !__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
        !__builtin_cpu_supports("avx512vl") || !__builtin_cpu_supports("avx512vnni") ||
        (vbmi && !__builtin_cpu_supports("avx512vbmi")))
        return 0;
    qc_isa *v = &isa[vbmi ? 1 : 0];
    *v = *base;
    v->name = vbmi ? "avx512" : "avx512novbmi";
    v->cb_dot = vbmi ? cb_dot_vbmi : cb_dot_avx512;
    v->i8_gemm = qc_i8_gemm_avx512vnni;
    v->i4_direct = qc_i4_direct_avx512vnni;
    if (vbmi) {
        v->lut_pair_block = lut_pair_block_vbmi;
        v->lut_pair_block_pf = lut_pair_block_vbmi_pf;
        v->lut_block = lut_block_vbmi;
        v->lut_block_pf = lut_block_vbmi_pf;
        v->lut_binary_pair = 1;
        v->i8_decode = qc_i8_decode_avx512vbmi;
    }
    return v;
}

const qc_isa *qc_isa_avx512(void) {
    const qc_isa *v = avx512_isa(1);
    return v ? v : avx512_isa(0);
}
const qc_isa *qc_isa_avx512_novbmi(void) { return avx512_isa(0); }
#else
const qc_isa *qc_isa_avx512(void) { return 0; }
const qc_isa *qc_isa_avx512_novbmi(void) { return 0; }
#endif
