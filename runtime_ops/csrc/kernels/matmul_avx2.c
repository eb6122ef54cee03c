/* AVX2 + FMA inner loops: LUT GEMV with _mm256_shuffle_epi8 on int8 tables, FMA panels,
 * codebook lookups with pshufb + maddubs. Integer parts are exact, float epilogues use the same
 * mul-then-add order as the scalar code, so the int8 paths match scalar bit for bit. */
#include "qc_internal.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#include <immintrin.h>
/* Software prefetch distance (bytes) on the streamed weight indices (the _pf loops, used for large
 * matrices, which come from memory: the hardware prefetcher alone left the loops waiting on it). */
#ifndef QC_PF
#define QC_PF 4096
#endif

static inline __attribute__((always_inline)) void lut_rows(const uint8_t *nib, const int8_t *tables,
                                                            size_t tab_stride, const float *scales, int G,
                                                            int S, const int R, float *acc, const int pf) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi8(1);
    for (int g = 0; g < G; ++g) {
        __m256i i32[4][4];
        for (int r = 0; r < R; ++r)
            for (int j = 0; j < 4; ++j) i32[r][j] = _mm256_setzero_si256();
        for (int s0 = 0; s0 < S; s0 += 128) { /* int16 sums: at most 128 * 254 */
            const int s1 = S - s0 < 128 ? S : s0 + 128;
            __m256i lo[4], hi[4];
            for (int r = 0; r < R; ++r) lo[r] = hi[r] = _mm256_setzero_si256();
            for (int s = s0; s < s1; ++s) {
                const size_t q = (size_t)g * S + s;
                if (pf) _mm_prefetch((const char *)(nib + q * 32 + QC_PF), _MM_HINT_T0);
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

QC_LUT_ENTRY(, lut_block_avx2, lut_rows, 0)
QC_LUT_ENTRY(, lut_block_avx2_pf, lut_rows, 1)

/* Paired planes: one broadcast table per 4 elements; pshufb puts the two plane lookups of a column
 * in adjacent bytes, so maddubs(1, .) is both the pair sum and the widening to int16. */
static inline __attribute__((always_inline)) void lut_pair_rows(const uint8_t *nib, const int8_t *tables,
                                                                 size_t tab_stride, const float *scales, int G,
                                                                 int S, const int R, float *acc, const int pf) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi8(1);
    for (int g = 0; g < G; ++g) {
        __m256i i32[4][4];
        for (int r = 0; r < R; ++r)
            for (int j = 0; j < 4; ++j) i32[r][j] = _mm256_setzero_si256();
        for (int s0 = 0; s0 < S; s0 += 128) { /* int16 sums: at most 128 * 254 */
            const int s1 = S - s0 < 128 ? S : s0 + 128;
            __m256i lo[4], hi[4];
            for (int r = 0; r < R; ++r) lo[r] = hi[r] = _mm256_setzero_si256();
            const uint8_t *nb = nib + ((size_t)g * S + s0) * 32;
            const int8_t *tb = tables + ((size_t)g * S + s0) * 16;
            for (int s = s0; s < s1; ++s, nb += 32, tb += 16) {
                if (pf) _mm_prefetch((const char *)(nb + QC_PF), _MM_HINT_T0);
                const __m256i v = _mm256_loadu_si256((const __m256i *)nb);
                const __m256i ixl = _mm256_and_si256(v, m4);
                const __m256i ixh = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                for (int r = 0; r < R; ++r) {
                    const __m256i t = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(tb + r * tab_stride)));
                    lo[r] = _mm256_add_epi16(lo[r], _mm256_maddubs_epi16(ones, _mm256_shuffle_epi8(t, ixl)));
                    hi[r] = _mm256_add_epi16(hi[r], _mm256_maddubs_epi16(ones, _mm256_shuffle_epi8(t, ixh)));
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

QC_LUT_ENTRY(, lut_pair_block_avx2, lut_pair_rows, 0)
QC_LUT_ENTRY(, lut_pair_block_avx2_pf, lut_pair_rows, 1)

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

/* 8 vectors of int32 partial sums -> their 8 totals, in one vector (hadd tree, then the lanes). */
static inline __m256i hsum8_epi32(const __m256i *t) {
    const __m256i a = _mm256_hadd_epi32(_mm256_hadd_epi32(t[0], t[1]), _mm256_hadd_epi32(t[2], t[3]));
    const __m256i b = _mm256_hadd_epi32(_mm256_hadd_epi32(t[4], t[5]), _mm256_hadd_epi32(t[6], t[7]));
    /* a: lane 0 = low-half sums of t0..t3, lane 1 = high-half sums; same for b with t4..t7 */
    return _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20), _mm256_permute2x128_si256(a, b, 0x31));
}

/* 64 k per half-chunk: low nibbles index k .. k+31, high nibbles k+64 .. k+95 of the 128-k chunk.
 * |w| (unsigned) x sign(a, w) keeps maddubs' pair sums below 2 * 127 * 127 (no saturation); one
 * row: |a| x sign(w, a), the same products with |a| computed once for 8 columns.
 * NCOL columns per pass (adjacent in the 8-column interleave: fewer passes over the stream). */
static inline __attribute__((always_inline)) void cb_rows(const uint8_t *nib0, const int8_t *cb0, int NC,
                                                           const int8_t *a, size_t a_stride, int kp, const int R,
                                                           int32_t *out) {
    enum { NCOL_MAX = 8 };
    const int NCOL = R == 1 ? 8 : R == 2 ? 4 : 1; /* 16 ymm registers */
    const __m256i m4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    __m256i part[4][8];
    for (int c = 0; c < 8; c += NCOL) {
        __m256i acc[NCOL_MAX][4];
        for (int i = 0; i < NCOL; ++i)
            for (int r = 0; r < R; ++r) acc[i][r] = _mm256_setzero_si256();
        if (c < NC) {
            const int8_t *cbc[NCOL_MAX]; /* centroids re-broadcast from memory (a load, no ALU op) */
            for (int i = 0; i < NCOL; ++i) /* columns past NC: their (zero) padding slots, discarded */
                cbc[i] = cb0 + 16 * (c + i < NC ? c + i : c);
            const uint8_t *nb = nib0 + (size_t)c * 64;
            for (int t = 0; t < kp / 128; ++t, nb += 512) {
                if (NCOL < 8 && c == 0) /* the first pass fetches the chunk's other columns for the next passes */
                    for (int j = NCOL; j < 8; ++j) _mm_prefetch((const char *)(nb + 64 * j), _MM_HINT_T0);
                for (int h = 0; h < 2; ++h) {
                    if (R == 1) { /* one row: |a| x sign(w, a), |a| shared by the 8 columns */
                        const __m256i a0 = _mm256_loadu_si256((const __m256i *)(a + 128 * t + 32 * h));
                        const __m256i a1 = _mm256_loadu_si256((const __m256i *)(a + 128 * t + 64 + 32 * h));
                        const __m256i u0 = _mm256_abs_epi8(a0), u1 = _mm256_abs_epi8(a1);
                        for (int i = 0; i < NCOL; ++i) {
                            const __m256i v = _mm256_loadu_si256((const __m256i *)(nb + 64 * i + 32 * h));
                            const __m256i cb = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)cbc[i]));
                            const __m256i wl = _mm256_shuffle_epi8(cb, _mm256_and_si256(v, m4));
                            const __m256i wh = _mm256_shuffle_epi8(cb, _mm256_and_si256(_mm256_srli_epi16(v, 4), m4));
                            const __m256i pl = _mm256_maddubs_epi16(u0, _mm256_sign_epi8(wl, a0));
                            const __m256i ph = _mm256_maddubs_epi16(u1, _mm256_sign_epi8(wh, a1));
                            acc[i][0] = _mm256_add_epi32(
                                acc[i][0], _mm256_add_epi32(_mm256_madd_epi16(pl, ones), _mm256_madd_epi16(ph, ones)));
                        }
                        continue;
                    }
                    for (int i = 0; i < NCOL; ++i) {
                        const __m256i v = _mm256_loadu_si256((const __m256i *)(nb + 64 * i + 32 * h));
                        const __m256i cb = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)cbc[i]));
                        const __m256i wl = _mm256_shuffle_epi8(cb, _mm256_and_si256(v, m4));
                        const __m256i wh = _mm256_shuffle_epi8(cb, _mm256_and_si256(_mm256_srli_epi16(v, 4), m4));
                        const __m256i al = _mm256_abs_epi8(wl), ah = _mm256_abs_epi8(wh);
                        for (int r = 0; r < R; ++r) {
                            const int8_t *ar = a + r * a_stride + 128 * t + 32 * h;
                            const __m256i pl =
                                _mm256_maddubs_epi16(al, _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)ar), wl));
                            const __m256i ph = _mm256_maddubs_epi16(
                                ah, _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(ar + 64)), wh));
                            acc[i][r] = _mm256_add_epi32(
                                acc[i][r], _mm256_add_epi32(_mm256_madd_epi16(pl, ones), _mm256_madd_epi16(ph, ones)));
                        }
                    }
                }
            }
        }
        for (int i = 0; i < NCOL; ++i)
            for (int r = 0; r < R; ++r) part[r][c + i] = acc[i][r];
    }
    for (int r = 0; r < R; ++r) _mm256_storeu_si256((__m256i *)(out + 8 * r), hsum8_epi32(part[r]));
}

static void cb_dot_avx2(const uint8_t *nib, const int8_t *cb, const int32_t *wsum, const int32_t *asum, int NC, const int8_t *a,
                        size_t a_stride, int kp, int R, int32_t *out) {
    switch (R) {
    case 1: cb_rows(nib, cb, NC, a, a_stride, kp, 1, out); break;
    case 2: cb_rows(nib, cb, NC, a, a_stride, kp, 2, out); break;
    case 3: cb_rows(nib, cb, NC, a, a_stride, kp, 3, out); break;
    default: cb_rows(nib, cb, NC, a, a_stride, kp, 4, out); break;
    }
}

/* Same operations as the scalar tables: the pair sums p01[e] = +-x0 +-x1 and p23[e] = +-x2 +-x3 in
 * one vector, entry i = p01[i & 3] + p23[i >> 2], round to nearest, saturate, clamp at -127. */
static void lut_tables_avx2(const float *av, int64_t Q, float inv, int8_t *T) {
    const __m256 vinv = _mm256_set1_ps(inv);
    const __m256 ca = _mm256_setr_ps(-1.f, 1.f, -1.f, 1.f, -1.f, 1.f, -1.f, 1.f);
    const __m256 cb = _mm256_setr_ps(-1.f, -1.f, 1.f, 1.f, -1.f, -1.f, 1.f, 1.f);
    const __m256i ia = _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2), ib = _mm256_setr_epi32(1, 1, 1, 1, 3, 3, 3, 3);
    const __m256i ilo = _mm256_setr_epi32(0, 1, 2, 3, 0, 1, 2, 3);
    const __m256i i0 = _mm256_setr_epi32(4, 4, 4, 4, 5, 5, 5, 5), i1 = _mm256_setr_epi32(6, 6, 6, 6, 7, 7, 7, 7);
    const __m128i m127 = _mm_set1_epi8(-127);
    for (int64_t q = 0; q < Q; ++q) {
        const __m256 x = _mm256_castps128_ps256(_mm_loadu_ps(av + q * 4));
        const __m256 p = _mm256_add_ps(_mm256_mul_ps(_mm256_permutevar8x32_ps(x, ia), ca),
                                       _mm256_mul_ps(_mm256_permutevar8x32_ps(x, ib), cb)); /* p01 | p23 */
        const __m256 lo = _mm256_permutevar8x32_ps(p, ilo);
        const __m256 v0 = _mm256_add_ps(lo, _mm256_permutevar8x32_ps(p, i0));
        const __m256 v1 = _mm256_add_ps(lo, _mm256_permutevar8x32_ps(p, i1));
        const __m256i q0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, vinv)), q1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, vinv));
        const __m256i p16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(q0, q1), 0xD8);
        const __m128i p8 = _mm_packs_epi16(_mm256_castsi256_si128(p16), _mm256_extracti128_si256(p16, 1));
        _mm_storeu_si128((__m128i *)(T + q * 16), _mm_max_epi8(p8, m127));
    }
}

/* fp32 tables of 8 entries: vpermps looks up 8 columns at once; no rounding beyond fp32 sums.
 * J groups of 8 columns (J * R independent sums) per pass share the index decode of a step. */
static inline __attribute__((always_inline)) void flut_rows(const uint8_t *idx, const float *tables,
                                                             size_t tab_stride, const float *scales, int G, int S,
                                                             const int paired, const int R, float *acc) {
    enum { J_MAX = 4 };
    const int J = R == 1 ? 4 : 2;
    const size_t step_bytes = paired ? 64 : 32;
    for (int j0 = 0; j0 < 4; j0 += J)
        for (int g = 0; g < G; ++g) {
            __m256 s[4][J_MAX];
            for (int r = 0; r < R; ++r)
                for (int j = 0; j < J; ++j) s[r][j] = _mm256_setzero_ps();
            const uint8_t *ib = idx + (size_t)g * S * step_bytes + 8 * j0;
            const float *tq = tables + (size_t)g * S * 8;
            for (int st = 0; st < S; ++st, ib += step_bytes, tq += 8) {
                __m256i ia[J_MAX], ibb[J_MAX];
                for (int j = 0; j < J; ++j) {
                    ia[j] = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(ib + 8 * j)));
                    ibb[j] = paired ? _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(ib + 32 + 8 * j))) : ia[j];
                }
                for (int r = 0; r < R; ++r) {
                    const __m256 t = _mm256_loadu_ps(tq + r * tab_stride);
                    for (int j = 0; j < J; ++j) {
                        __m256 v = _mm256_permutevar8x32_ps(t, ia[j]);
                        if (paired) v = _mm256_add_ps(v, _mm256_permutevar8x32_ps(t, ibb[j]));
                        s[r][j] = _mm256_add_ps(s[r][j], v);
                    }
                }
            }
            for (int j = 0; j < J; ++j) {
                const __m256 sc = _mm256_loadu_ps(scales + g * 32 + 8 * (j0 + j));
                for (int r = 0; r < R; ++r) {
                    float *a = acc + r * 32 + 8 * (j0 + j);
                    _mm256_storeu_ps(a, _mm256_add_ps(_mm256_loadu_ps(a), _mm256_mul_ps(s[r][j], sc)));
                }
            }
        }
}

static void flut_block_avx2(const uint8_t *idx, const float *tables, size_t tab_stride, const float *scales, int G,
                            int S, int paired, int R, float *acc) {
#define QC_FLUT(P, RR) flut_rows(idx, tables, tab_stride, scales, G, S, P, RR, acc)
    switch ((paired ? 4 : 0) + (R < 1 ? 1 : R > 4 ? 4 : R) - 1) {
    case 0: QC_FLUT(0, 1); break;
    case 1: QC_FLUT(0, 2); break;
    case 2: QC_FLUT(0, 3); break;
    case 3: QC_FLUT(0, 4); break;
    case 4: QC_FLUT(1, 1); break;
    case 5: QC_FLUT(1, 2); break;
    case 6: QC_FLUT(1, 3); break;
    default: QC_FLUT(1, 4); break;
    }
#undef QC_FLUT
}

/* 16 fp32 centroids in two vectors: vpermps in each, blend on index bit 3; 8 k per step, the decoded
 * weights shared by the R rows' FMAs. */
static inline __attribute__((always_inline)) void cbf_rows(const uint8_t *nib0, const float *cb0, int NC,
                                                            const float *a, size_t a_stride, int kp, const int R,
                                                            float *out) {
    const __m256i m4 = _mm256_set1_epi32(15);
    for (int c = 0; c < NC; ++c) {
        const uint8_t *nib = nib0 + (size_t)c * 64;
        const __m256 lo8 = _mm256_loadu_ps(cb0 + 16 * c), hi8 = _mm256_loadu_ps(cb0 + 16 * c + 8);
        __m256 acc[4][2];
        for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
        for (int t = 0; t < kp / 128; ++t)
            for (int j = 0; j < 64; j += 8) {
                const __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(nib + 512 * t + j)));
                const __m256i il = _mm256_and_si256(b, m4), ih = _mm256_srli_epi32(b, 4);
                const __m256 wl = _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo8, il), _mm256_permutevar8x32_ps(hi8, il),
                                                   _mm256_castsi256_ps(_mm256_slli_epi32(il, 28)));
                const __m256 wh = _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo8, ih), _mm256_permutevar8x32_ps(hi8, ih),
                                                   _mm256_castsi256_ps(_mm256_slli_epi32(ih, 28)));
                for (int r = 0; r < R; ++r) {
                    const float *ar = a + r * a_stride + 128 * t + j;
                    acc[r][0] = _mm256_fmadd_ps(wl, _mm256_loadu_ps(ar), acc[r][0]);
                    acc[r][1] = _mm256_fmadd_ps(wh, _mm256_loadu_ps(ar + 64), acc[r][1]);
                }
            }
        for (int r = 0; r < R; ++r) {
            const __m256 s = _mm256_add_ps(acc[r][0], acc[r][1]);
            __m128 q = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
            q = _mm_add_ps(q, _mm_movehl_ps(q, q));
            q = _mm_add_ss(q, _mm_movehdup_ps(q));
            out[r * 8 + c] = _mm_cvtss_f32(q);
        }
    }
}

static void cbf_dot_avx2(const uint8_t *nib, const float *cb, int NC, const float *a, size_t a_stride, int kp, int R,
                         float *out) {
    switch (R) {
    case 1: cbf_rows(nib, cb, NC, a, a_stride, kp, 1, out); break;
    case 2: cbf_rows(nib, cb, NC, a, a_stride, kp, 2, out); break;
    case 3: cbf_rows(nib, cb, NC, a, a_stride, kp, 3, out); break;
    default: cbf_rows(nib, cb, NC, a, a_stride, kp, 4, out); break;
    }
}

static const qc_isa kAvx2 = {"avx2", lut_block_avx2, lut_pair_block_avx2, fma_panel_avx2, cb_dot_avx2, lut_tables_avx2,
                             flut_block_avx2, cbf_dot_avx2, lut_block_avx2_pf, lut_pair_block_avx2_pf, 0,
                             qc_i8_gemm_avx2, 1, qc_i8_decode_avx2, qc_i4_direct_avx2};
const qc_isa *qc_isa_avx2(void) {
    return (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) ? &kAvx2 : 0;
}

/* CPUID.(EAX=7, ECX=1):EAX bit 4 (the OS saves ymm state: implied by AVX2 being usable). */
int qc_cpu_has_avxvnni(void) {
    unsigned a, b, c, d;
    return __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a >> 4 & 1u);
}

/* AVX2 with the AVX-VNNI kernel on the batched int8 path (CPUs with AVX-VNNI but no AVX-512). */
static const qc_isa kAvxVnni = {"avxvnni", lut_block_avx2, lut_pair_block_avx2, fma_panel_avx2, cb_dot_avx2,
                                lut_tables_avx2, flut_block_avx2, cbf_dot_avx2, lut_block_avx2_pf,
                                lut_pair_block_avx2_pf, 0, qc_i8_gemm_avxvnni, 1, qc_i8_decode_avx2,
                                qc_i4_direct_avx2};
const qc_isa *qc_isa_avxvnni(void) { return qc_isa_avx2() && qc_cpu_has_avxvnni() ? &kAvxVnni : 0; }
#else
const qc_isa *qc_isa_avx2(void) { return 0; }
const qc_isa *qc_isa_avxvnni(void) { return 0; }
int qc_cpu_has_avxvnni(void) { return 0; }
#endif
