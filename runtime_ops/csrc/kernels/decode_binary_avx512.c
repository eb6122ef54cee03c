/* Binary codes -> the batched int8 path's tile (qc_isa.i8_decode of the avx512 variant with VBMI,
 * which prepacks binary codes in the paired layout): per kernel row, one vpermb per plane copies
 * each column's record byte to its 4 element slots, a bit test per half of the row sets that
 * plane's bit of the code (a masked add into an index seeded with the column's table offset), and
 * one vpermi2b per half looks the value up in 128-byte tables holding every column's values of
 * the group (2 planes: all 32 columns in one table pair; 3: 16 per pair; 4: 8 per pair, two
 * lookups blended). The values are gemm_int8.c's (the portable decoder's) bit for bit: 2 bit - 1
 * for one plane, the column's int8 value table for more, 0 past N. Other kinds: the AVX2 decoders. */
#include "qc_internal.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#include <string.h>

#define QC_VBMI __attribute__((target("avx512vbmi,avx512vl,avx512bw,avx512f")))

QC_VBMI static int decode_binary_vbmi(const qc_matmul *w, int64_t cb, int64_t g, int64_t q0, int nq, int8_t *wt) {
    const int64_t P = w->n_planes, G = w->G, S = w->steps;
    const int lcp = 7 - (int)P < 5 ? 7 - (int)P : 5, CP = 1 << lcp; /* columns per 128-byte table pair (2^P values each) */
    /* each column's 16-byte value row stored whole, ascending (a column overwrites the unused tail
     * of the previous one; the last one's tail lands in the slack) */
    int8_t tab[4 * 128 + 16];
    if (P == 1) memset(tab + 64, 0, 64); /* the only width whose rows leave loaded bytes unwritten */
    for (int c = 0; c < 32; ++c) {
        const int64_t n = cb * 32 + c;
        int8_t *t = tab + (c >> lcp) * 128 + ((c & (CP - 1)) << P);
        if (P == 1)
            _mm_storeu_si128((__m128i *)t, _mm_setr_epi8(-1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0));
        else
            _mm_storeu_si128((__m128i *)t, n < w->N ? _mm_loadu_si128((const __m128i *)(w->gvt + (n * G + g) * 16))
                                                    : _mm_setzero_si128());
    }
    const int NT = (32 + CP - 1) / CP;
    __m512i lo[4], hi[4];
    for (int t = 0; t < NT; ++t) {
        lo[t] = _mm512_loadu_si512((const void *)(tab + t * 128));
        hi[t] = _mm512_loadu_si512((const void *)(tab + t * 128 + 64));
    }
    /* byte i of half h: column 16h + i / 4, element i % 4; paired record byte 2 (column % 16) + (row
     * & 1), low nibble for columns < 16, high for the others */
    const __m512i four = _mm512_set1_epi32(0x01010101);
    const __m512i quad = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), four);
    const __m512i vspread = _mm512_add_epi8(quad, quad); /* 2 (i / 4) */
    const __m512i cmask = _mm512_set1_epi8((char)(CP - 1));
    /* the column's table offset (column % CP) x E: below 128, so a 16-bit shift stays in its byte */
    const __m512i vbase[2] = {_mm512_slli_epi16(_mm512_and_si512(quad, cmask), (unsigned)P),
                              _mm512_slli_epi16(_mm512_and_si512(_mm512_add_epi8(quad, _mm512_set1_epi8(16)), cmask),
                                                (unsigned)P)};
    const __m512i vbit[2] = {_mm512_set1_epi32(0x08040201), _mm512_set1_epi32((int)0x80402010u)};
    const __mmask64 upper = 0xFFFFFFFF00000000ull; /* 4 planes: bytes of the half's second 8 columns */
    for (int i = 0; i < nq; ++i) {
        const int64_t q = q0 + i, s = q >> 1;
        const __m512i idx = _mm512_add_epi8(vspread, _mm512_set1_epi8((char)(q & 1)));
        __m512i code[2] = {vbase[0], vbase[1]};
        for (int64_t p = 0; p < P; ++p) {
            const uint8_t *rec = w->nib + (((cb * P + p) * G + g) * S + s) * 32;
            const __m512i x = _mm512_permutexvar_epi8(idx, _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)rec)));
            const __m512i pb = _mm512_set1_epi8((char)(1 << p));
            for (int h = 0; h < 2; ++h)
                code[h] = _mm512_mask_add_epi8(code[h], _mm512_test_epi8_mask(x, vbit[h]), code[h], pb);
        }
        for (int h = 0; h < 2; ++h) {
            __m512i v;
            if (P == 4)
                v = _mm512_mask_blend_epi8(upper, _mm512_permutex2var_epi8(lo[2 * h], code[h], hi[2 * h]),
                                           _mm512_permutex2var_epi8(lo[2 * h + 1], code[h], hi[2 * h + 1]));
            else
                v = _mm512_permutex2var_epi8(lo[P == 3 ? h : 0], code[h], hi[P == 3 ? h : 0]);
            _mm512_storeu_si512((void *)(wt + (size_t)i * 128 + 64 * h), v);
        }
    }
    return nq;
}

int qc_i8_decode_avx512vbmi(const qc_matmul *w, int64_t cb, int64_t g, int64_t q0, int nq, int8_t *wt) {
    if (w->kind == QC_BINARY && w->isa->lut_binary_pair && w->n_planes <= 4)
        return decode_binary_vbmi(w, cb, g, q0, nq, wt);
    return qc_i8_decode_avx2(w, cb, g, q0, nq, wt);
}
#endif
