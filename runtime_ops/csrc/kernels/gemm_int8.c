/* The batched int8 path of TernaryMatMul / BinaryCodeMatMul / CodebookMatMul at accuracy_level 4,
 * for M >= a crossover (many rows: encoders, prompts, batches). Per block of 32 columns and chunk
 * of up to 256 elements, the packed weights are decoded once to int8 into a cache-resident tile
 * (wt[q][c][4]: kernel row q = 4 consecutive elements, column c) that an int8 dot-product kernel
 * (qc_isa.i8_gemm: AVX2 maddubs, NEON sdot, the portable one here) runs over all rows.
 *
 * Numerics (inside the contract's level-4 bound; integer parts exact, one float order for every
 * ISA, so every variant equals the portable one bit for bit):
 * - activations: one int8 scale per row, s = amax / 127 over the non-outlier channels,
 *   q = clamp(lrintf(a * 127 / amax), -127, 127), laid out like the lookup tables' groups;
 * - weights: ternary codes and 1-bit codes decode exactly to -1/0/+1 with the format's scale per
 *   (column, group); 2-4 binary-code planes and codebooks decode each code's value to int8 in
 *   [-64, 64] on a per (column, group) scale vmax / 64 (vmax: the largest |value|): rounding
 *   <= vmax / 128 per weight, inside the bound's weight term (max |W| sum |A| / 64); int4 codes
 *   decode exactly to code - 8 with the format's scale per (column, group), the zero point's part
 *   (8 - z) x the group's int8 activation sum added to the int32 sum, and their activations get one
 *   int8 scale per (row, group) (quantize_row_groups; Int4MatMul has no other level-4 path: the
 *   batched one runs from M = 1, below a crossover straight from the packed records, without the
 *   tile: qc_isa.i4_direct, the same integers and floats);
 * - y = (sum over groups g, ascending, of (float)isum_g * scale_g) * s, then outliers, then bias;
 *   int4: y = sum over g of ((float)isum_g * scale_g) * s_g, then outliers, then bias. */
#include "qc_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(QC_NO_CLONES)
#define QC_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define QC_CLONES
#endif

enum { GEMM_CHUNK_Q = 64, GEMM_ROWS = 128 }; /* kernel rows per tile (256 elements), rows per task */

/* Crossover M: from it on the batched path runs. Chosen per int8 kernel by `runtime_ops.bench
 * --paths` (one thread, CPU time; README): the smallest measured M from which the batched path is
 * faster on most shapes and at most ~5% slower on any.
 * - AVX-512 VNNI (the avx512 variants; measured with the VBMI lookup loops on the 2-core AMD EPYC,
 *   768x3072, 2048x2048, 4096x4096, M 4-256, load 11-13): ternary / 1-bit codes from 16, 3-4
 *   planes and codebooks from 32, 2 planes from 64 (tie at 32). Without VBMI the lookup loops are
 *   slower and the int8 kernel the same: the crossover can only move down, so the same table.
 *   With the VBMI binary-code decoder (the avx512 variant; the 2-core AVX-512 VNNI EPYC of
 *   2026-12-04, 768x3072, 2048x2048, 4096x4096, M 4-64, load 0.3-0.5): 2 planes from 16 (at most
 *   5% slower there, faster from 32), 3 planes from 16 (6% slower at 8 on 4096x4096); 4 planes as 3.
 * - AVX-VNNI (avxvnni; same machine and grid): ternary / 1-bit from 16, 3-4 planes from 32,
 *   2 planes from 64, codebooks from 8.
 * - AMX-INT8 (amx; the 2-core Sapphire Rapids, 768x3072 and 4096x4096, M 4-64, one thread, the
 *   other core busy): codebooks from 8 (3% slower at 8 on 768x3072, faster on 4096x4096), every
 *   binary-code width and ternary from 32 (ternary at 16: 1.5x faster on 768x3072, 1.35x slower
 *   on 4096x4096; 2 planes tie at 32).
 * - AVX2 maddubs (and NEON sdot, not measured), on the AVX2 EPYC: codebooks from 8 (the codebook
 *   GEMV is the slowest small-M path); ternary / 1-bit (int16 kernel) and 3-4 planes tie with the
 *   lookup tables around 64 and win above; 2 planes never won there (lookup tables 1.0-1.2x
 *   faster up to M = 256): 0, off unless QCOMPILER_GEMM_MIN_M asks for it. */
static int64_t default_min_m(const qc_matmul *w) {
    if (w->kind == QC_INT4) return 1; /* int4 has no other level-4 path */
    const int exact = w->kind == QC_TERNARY || (w->kind == QC_BINARY && w->n_planes == 1);
    const int two = w->kind == QC_BINARY && w->n_planes == 2;
    const qc_i8_gemm_fn k = w->isa->i8_gemm;
#if defined(__x86_64__) || defined(_M_X64)
    if (k == qc_i8_gemm_amx) return w->kind == QC_CODEBOOK ? 8 : 32;
    if (k == qc_i8_gemm_avx512vnni && w->kind == QC_BINARY && w->isa->i8_decode == qc_i8_decode_avx512vbmi)
        return 16; /* binary codes decoded with VBMI (decode_binary_avx512.c) */
    if (k == qc_i8_gemm_avx512vnni) return exact ? 16 : two ? 64 : 32;
    if (k == qc_i8_gemm_avxvnni) return exact ? 16 : two ? 64 : w->kind == QC_CODEBOOK ? 8 : 32;
#endif
    if (w->kind == QC_CODEBOOK) return 8;
    return two ? 0 : 64;
}

static int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* nibble v -> bit j of v in byte j */
#define QC_N4(v) ((uint32_t)((v) & 1) | (uint32_t)((v) >> 1 & 1) << 8 | (uint32_t)((v) >> 2 & 1) << 16 | \
                  (uint32_t)((v) >> 3 & 1) << 24)
static const uint32_t kNib4[16] = {QC_N4(0),  QC_N4(1),  QC_N4(2),  QC_N4(3), QC_N4(4),  QC_N4(5),
                                   QC_N4(6),  QC_N4(7),  QC_N4(8),  QC_N4(9), QC_N4(10), QC_N4(11),
                                   QC_N4(12), QC_N4(13), QC_N4(14), QC_N4(15)};
/* four bytes v_j in 0..2 -> v_j - 1 (no borrow between bytes) */
static inline uint32_t minus_one4(uint32_t v) { return (v + 0x7F7F7F7Fu) ^ 0x80808080u; }

/* ----------------------------------------------------------------------------------- decoders */
/* Portable ternary decoder: kernel row q is step q of the paired layout (4 elements; column c reads
 * plane a from byte 2(c%16), plane b from byte 2(c%16)+1, low nibbles for c < 16), w = a + b - 1. */
static void decode_ternary_rows(const uint8_t *rec, int nq, int8_t *wt) {
    for (int q = 0; q < nq; ++q, rec += 32, wt += 128)
        for (int c = 0; c < 16; ++c) {
            const unsigned x = rec[2 * c], y = rec[2 * c + 1];
            const uint32_t lo = minus_one4(kNib4[x & 15u] + kNib4[y & 15u]);
            const uint32_t hi = minus_one4(kNib4[x >> 4] + kNib4[y >> 4]);
            memcpy(wt + 4 * c, &lo, 4);
            memcpy(wt + 64 + 4 * c, &hi, 4);
        }
}

/* The 4-bit nibble of lookup group 2s + h (h = 0, 1) of column c in a binary-code step record
 * rec: byte c, nibble h in the plain layout; byte 2(c%16) + h, nibble c / 16 in the paired one
 * (qc_isa.lut_binary_pair, the AVX-512 VBMI loops). */
static inline unsigned binary_rec_nibble(const uint8_t *rec, int c, unsigned h, int paired) {
    return paired ? (rec[2 * (c & 15) + h] >> (c < 16 ? 0 : 4)) & 15u : (rec[c] >> (4 * h)) & 15u;
}

/* Kernel rows [q0, q0 + nq) of scale group g of column block cb into wt. */
static void decode_portable(const qc_matmul *w, int64_t cb, int64_t g, int64_t q0, int nq, int8_t *wt) {
    if (w->kind == QC_INT4) { /* tile byte t from nibble (t & 32 ? high : low) of byte (t & 31) + (t >= 64 ? 32 : 0) */
        const uint8_t *rec = w->i4 + ((cb * w->G + g) * w->gemm_lq + q0) * 64;
        for (int q = 0; q < nq; ++q, rec += 64, wt += 128)
            for (int t = 0; t < 128; ++t)
                wt[t] = (int8_t)((int)((rec[(t & 31) + (t >= 64 ? 32 : 0)] >> (t & 32 ? 4 : 0)) & 15u) - 8);
        return;
    }
    if (w->kind == QC_TERNARY) {
        decode_ternary_rows(w->nib + ((cb * w->G + g) * w->steps + q0) * 32, nq, wt);
        return;
    }
    if (w->kind == QC_BINARY) { /* step s = 8 elements: kernel rows 2s (low nibbles) and 2s + 1 */
        const int64_t P = w->n_planes, G = w->G, S = w->steps;
        const int paired = w->isa->lut_binary_pair;
        for (int i = 0; i < nq; ++i) {
            const int64_t q = q0 + i, s = q >> 1;
            const unsigned h = (unsigned)(q & 1);
            int8_t *row = wt + (size_t)i * 128;
            if (P == 1) {
                const uint8_t *rec = w->nib + ((cb * G + g) * S + s) * 32;
                for (int c = 0; c < 32; ++c) {
                    const uint32_t v = minus_one4(kNib4[binary_rec_nibble(rec, c, h, paired)] << 1); /* 2 bit - 1 */
                    memcpy(row + 4 * c, &v, 4);
                }
                continue;
            }
            for (int c = 0; c < 32; ++c) {
                uint32_t combo = 0; /* byte j: bit p = sign bit of plane p for element j */
                for (int64_t p = 0; p < P; ++p)
                    combo |= kNib4[binary_rec_nibble(w->nib + (((cb * P + p) * G + g) * S + s) * 32, c, h, paired)] << p;
                const int64_t n = cb * 32 + c;
                if (n >= w->N) {
                    memset(row + 4 * c, 0, 4);
                    continue;
                }
                const int8_t *vt = w->gvt + (n * G + g) * 16;
                for (int j = 0; j < 4; ++j) row[4 * c + j] = vt[(combo >> (8 * j)) & 15u];
            }
        }
        return;
    }
    /* codebook: chunk t (128 elements) of column n at cbnib + (n/8) 8 (kp/2) + (8t + n%8) 64, byte j
     * = idx(128t + j) | idx(128t + 64 + j) << 4 */
    for (int c = 0; c < 32; ++c) {
        const int64_t n = cb * 32 + c;
        if (n >= w->N) {
            for (int i = 0; i < nq; ++i) memset(wt + (size_t)i * 128 + 4 * c, 0, 4);
            continue;
        }
        const int8_t *vt = w->gvt + n * 16;
        const uint8_t *col = w->cbnib + (n / 8) * 8 * (w->kp / 2) + (n % 8) * 64;
        for (int i = 0; i < nq; ++i) {
            const int64_t k = (q0 + i) * 4, t = k / QC_CB_KB, j = k % QC_CB_KB;
            const uint8_t *b = col + t * 512 + (j & 63);
            const unsigned sh = j >= 64 ? 4u : 0u;
            int8_t *o = wt + (size_t)i * 128 + 4 * c;
            for (int e = 0; e < 4; ++e) o[e] = vt[(b[e] >> sh) & 15u];
        }
    }
}

static void decode_tile(const qc_matmul *w, int64_t cb, int64_t g, int64_t q0, int nq, int8_t *wt) {
    const int done = w->isa->i8_decode ? w->isa->i8_decode(w, cb, g, q0, nq, wt) : 0;
    if (done < nq) decode_portable(w, cb, g, q0 + done, nq - done, wt + (size_t)done * 128);
}

/* ---------------------------------------------------------------------- the portable kernel */
void qc_i8_gemm_scalar(const uint8_t *a, size_t a_stride, const int8_t *wt, int nq, int64_t M, int small,
                       int32_t *acc, int acc_in, const qc_gemm_epi *epi) {
    (void)small;
    for (int64_t m = 0; m < M; ++m) {
        const int8_t *am = (const int8_t *)(a + (size_t)m * a_stride);
        for (int c = 0; c < 32; ++c) {
            int32_t s = acc_in ? acc[m * 32 + c] : 0;
            for (int q = 0; q < nq; ++q)
                for (int j = 0; j < 4; ++j) s += (int32_t)am[4 * q + j] * wt[q * 128 + 4 * c + j];
            if (!epi) {
                acc[m * 32 + c] = s;
                continue;
            }
            const float x = (float)(s - epi->corr[c]) * epi->scale[c];
            float *f = epi->facc + m * 32 + c;
            *f = epi->first ? x : *f + x;
        }
    }
}

/* int4: below this M, qc_isa.i4_direct instead of the tile path. Chosen by qc_kernel_bench (one
 * thread, 768x3072, 2048x2048, 4096x4096, M 1-128, QCOMPILER_I4_DIRECT_MAX_M=0 against the
 * direct kernel, caches evicted by 8 and 64 MB) on a 2-core AMD EPYC with AVX-512 VNNI: the
 * AVX-512 one 2-3x faster than the tile path at M = 1-4, 1.1-1.6x at 8-128: every M. The AVX2 one
 * (forced on that machine, against the maddubs and the AVX-VNNI tile kernels): 1.5-2.5x at M = 1-2;
 * at 4-8 faster with weights from memory (1.2-1.4x) and from 6 on slower with them in cache
 * (0.6-0.9x): up to 5 rows, 4 against AVX-VNNI's kernel. */
static int64_t default_direct_max_m(const qc_matmul *w) {
#if defined(__x86_64__) || defined(_M_X64)
    /* AMX (not measured with the direct kernel): below 16 rows its tile path runs the VNNI kernel,
     * which the direct kernel beats; from 16 on the AMX tiles as before */
    if (w->isa->i8_gemm == qc_i8_gemm_amx) return 16;
    if (w->isa->i4_direct == qc_i4_direct_avx512vnni) return INT64_MAX;
    if (w->isa->i8_gemm == qc_i8_gemm_avxvnni) return 5;
#endif
    return 6;
}

/* ----------------------------------------------------------------------------- preparation */
void qc_gemm_free(qc_matmul *w) {
    free(w->gscale); free(w->gwsum); free(w->gvt);
    w->gscale = NULL; w->gwsum = NULL; w->gvt = NULL;
    w->gemm_min_m = 0;
}

int qc_gemm_prepare(qc_matmul *w) {
    w->gemm_min_m = 0;
    if (w->level < 4 || !w->isa->i8_gemm) return 0;
    if (w->kind == QC_INT4) {
        w->gemm_lq = w->gsp / 4;
        w->gemm_G = w->G;
        w->gemm_ncb = w->ncb;
    } else if (w->path == PATH_LUT) {
        w->gemm_lq = w->gsp / 4;
        w->gemm_G = w->G;
        w->gemm_ncb = w->ncb;
    } else if (w->path == PATH_CB) {
        w->gemm_lq = w->kp / 4;
        w->gemm_G = 1;
        w->gemm_ncb = cdiv(w->N, 32);
    } else {
        return 0;
    }
    const int64_t G = w->gemm_G, ncb = w->gemm_ncb, N = w->N, P = w->n_planes;
    w->gemm_small = w->kind == QC_TERNARY || (w->kind == QC_BINARY && P == 1) || (w->kind == QC_INT4 && w->i4_max * w->gemm_lq <= 64);
    w->gscale = (float *)calloc((size_t)(ncb * G * 32), sizeof(float));
    w->gwsum = (int32_t *)calloc((size_t)(ncb * G * 32), sizeof(int32_t));
    const int tables = w->kind == QC_BINARY ? P > 1 : w->kind == QC_CODEBOOK;
    if (tables) w->gvt = (int8_t *)calloc((size_t)(N * G * 16), 1);
    if (!w->gscale || !w->gwsum || (tables && !w->gvt)) { qc_gemm_free(w); return -1; }
    for (int64_t n = 0; n < N; ++n) {
        const int64_t cb = n / 32, c = n % 32;
        for (int64_t g = 0; g < G; ++g) {
            float *gs = w->gscale + (cb * G + g) * 32 + c;
            if (!tables) {
                *gs = w->scales[n * w->G + g]; /* ternary, int4: scales [N][G]; 1 plane: alphas [1][N][G] */
                continue;
            }
            float v[16], vmax = 0.f;
            const int E = w->kind == QC_BINARY ? 1 << P : 1 << w->bits;
            for (int e = 0; e < E; ++e) {
                if (w->kind == QC_BINARY) { /* the value as the reference sums it: planes in order */
                    float s = 0.f;
                    for (int64_t p = 0; p < P; ++p) s = s + w->scales[(p * N + n) * w->G + g] * ((e >> p) & 1 ? 1.f : -1.f);
                    v[e] = s;
                } else {
                    v[e] = w->scales[(n << w->bits) + e];
                }
                vmax = fabsf(v[e]) > vmax ? fabsf(v[e]) : vmax;
            }
            const float inv = vmax > 0.f ? 64.f / vmax : 0.f;
            *gs = vmax > 0.f ? vmax / 64.f : 0.f;
            int8_t *vt = w->gvt + (w->kind == QC_BINARY ? n * G + g : n) * 16;
            for (int e = 0; e < E; ++e) {
                const long q = lrintf(v[e] * inv);
                vt[e] = (int8_t)(q > 64 ? 64 : q < -64 ? -64 : q);
            }
        }
    }
    /* column sums of the decoded weights (padding included: its activations are 0 but the offset
     * kernels see them as 128) */
    int8_t *tile = (int8_t *)aligned_alloc(32, (size_t)GEMM_CHUNK_Q * 128); /* decoders store aligned registers */
    if (!tile) { qc_gemm_free(w); return -1; }
    for (int64_t cb = 0; cb < ncb; ++cb)
        for (int64_t g = 0; g < G; ++g) {
            int32_t *ws = w->gwsum + (cb * G + g) * 32;
            for (int64_t q0 = 0; q0 < w->gemm_lq; q0 += GEMM_CHUNK_Q) {
                const int nq = (int)(w->gemm_lq - q0 < GEMM_CHUNK_Q ? w->gemm_lq - q0 : GEMM_CHUNK_Q);
                decode_tile(w, cb, g, q0, nq, tile);
                for (int i = 0; i < nq; ++i)
                    for (int c = 0; c < 32; ++c)
                        for (int j = 0; j < 4; ++j) ws[c] += tile[i * 128 + 4 * c + j];
            }
        }
    free(tile);
    const char *env = getenv("QCOMPILER_GEMM_MIN_M");
    w->gemm_min_m = env && *env ? atoll(env) : default_min_m(w);
    const char *genv = getenv("QCOMPILER_I4_DIRECT_MAX_M");
    const int64_t gmax = genv && *genv ? atoll(genv) : default_direct_max_m(w);
    w->i4_direct_max_m = w->kind == QC_INT4 && w->isa->i4_direct && gmax > 0 ? gmax : 0;
    if (w->gemm_min_m <= 0) qc_gemm_free(w);
    return 0;
}

/* -------------------------------------------------------------------------------------- run */
typedef struct gemm_ctx {
    const qc_matmul *w;
    const float *A;
    int64_t M;
    float *Y;
    const uint8_t *aq; /* [M][KL] rows, KL bytes apart */
    const float *as;   /* [M], int4: [M][G] (a scale per row and group) */
    const int32_t *asum; /* int4: [M][G] sums of the int8 activations of each group */
    int64_t KL, parts;
    int direct; /* int4 on qc_isa.i4_direct (signed activations) */
} gemm_ctx;

/* x * inv rounded to nearest even as lrintf does, by adding 1.5 * 2^23 and reading the low bits
 * (exact for |x| <= 2^22; x is within +-127 here), then clamped as integers: vectorizes, and NaN /
 * inf inputs give defined (clamped) codes. Outlier channels can be far outside: the offset is
 * removed in unsigned arithmetic (a signed subtraction overflowed there: UBSan, fuzzer). */
static inline __attribute__((always_inline)) int32_t quantize_value(float x, float inv) {
    const float r = x * inv + 12582912.f;
    uint32_t u;
    memcpy(&u, &r, 4);
    int32_t q = (int32_t)(u - 0x4B400000u);
    q = q < -127 ? -127 : q;
    return q > 127 ? 127 : q;
}

/* 0 for outlier channels (fp32 in the epilogue), all ones otherwise: selects without a branch */
static inline __attribute__((always_inline)) int32_t keep_mask(uint8_t is_outlier) {
    return (int32_t)(0u - (uint32_t)(is_outlier == 0));
}
/* |x|, or +0 for an outlier channel (also when x is NaN, as the branch it replaces gave) */
static inline __attribute__((always_inline)) float masked_abs(float x, uint8_t is_outlier) {
    const float v = fabsf(x);
    uint32_t u;
    memcpy(&u, &v, 4);
    u &= (uint32_t)keep_mask(is_outlier);
    float r;
    memcpy(&r, &u, 4);
    return r;
}

/* The running lane maxima *m of |x[j]| over 8 values, outlier channels (isout, or none when NULL)
 * counting as 0; a NaN leaves its lane as it was (as `v > m ? v : m` does). In vector types: GCC
 * left the 8-lane loop of scalars unvectorized. */
typedef int32_t qc_v8i __attribute__((vector_size(32), aligned(4)));
static inline __attribute__((always_inline)) void max_abs8(qc_v8f *m, const float *x, const uint8_t *isout) {
    qc_v8i keep = {-1, -1, -1, -1, -1, -1, -1, -1};
    if (isout)
        for (int j = 0; j < 8; ++j) keep[j] = keep_mask(isout[j]);
    const qc_v8i v = *(const qc_v8i *)x & (qc_v8i){0x7fffffff, 0x7fffffff, 0x7fffffff, 0x7fffffff, 0x7fffffff,
                                                     0x7fffffff, 0x7fffffff, 0x7fffffff} & keep;
    const qc_v8i gt = (qc_v8f)v > *m;
    *m = (qc_v8f)((v & gt) | ((qc_v8i)*m & ~gt));
}

/* max |x[i]| over i < len, outlier channels (isout, or none when NULL) counting as 0: 8 lanes (the
 * max is exact in any order), then the tail, then the lanes */
static inline __attribute__((always_inline)) float masked_amax(const float *x, int64_t len, const uint8_t *isout) {
    qc_v8f m = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    int64_t i = 0;
    for (; i + 8 <= len; i += 8) max_abs8(&m, x + i, isout ? isout + i : NULL);
    float m8[8];
    memcpy(m8, &m, sizeof m8);
    for (; i < len; ++i) {
        const float v = masked_abs(x[i], isout ? isout[i] : 0);
        m8[0] = v > m8[0] ? v : m8[0];
    }
    float amax = 0.f;
    for (int j = 0; j < 8; ++j) amax = m8[j] > amax ? m8[j] : amax;
    return amax;
}

/* Row m's activations as int8 in the padded group layout (outlier channels and padding 0),
 * stored + 128 for kernels that read them unsigned. */
QC_CLONES static void quantize_row(const qc_matmul *w, const float *a, uint8_t *dst, int64_t KL, float *scale) {
    const float amax = masked_amax(a, w->K, w->n_out ? w->is_outlier : NULL);
    const float inv = amax > 0.f ? 127.f / amax : 0.f;
    *scale = amax > 0.f ? amax / 127.f : 0.f;
    const uint8_t off = w->isa->i8_act_offset ? 128 : 0;
    const int grouped = w->path == PATH_LUT || w->kind == QC_INT4;
    const int64_t seg = grouped ? w->gs : w->K, seg_pad = grouped ? w->gsp : w->kp;
    for (int64_t g = 0, k0 = 0; k0 < w->K; ++g, k0 += seg) {
        const int64_t len = w->K - k0 < seg ? w->K - k0 : seg;
        uint8_t *d = dst + g * seg_pad;
        memset(d + len, off, (size_t)(seg_pad - len)); /* padding */
        for (int64_t i = 0; i < len; ++i) d[i] = (uint8_t)(quantize_value(a[k0 + i], inv) + off);
    }
    for (int64_t j = 0; j < w->n_out; ++j) { /* outlier channels: fp32 in the epilogue */
        const int64_t k = w->oidx[j], g = k / seg;
        dst[g * seg_pad + (k - g * seg)] = off;
    }
}

/* One scale group of quantize_row_groups: 8 lanes for the max and the sum (both exact in any
 * order), outlier channels masked without a branch (with `? :` on them GCC kept both loops scalar:
 * 11-13% of Int4MatMul at 2048 x 2048, M = 256) and the mask compiled out when there are none. */
static inline __attribute__((always_inline)) void quantize_group(const float *x, int64_t len, const uint8_t *isout,
                                                                  const int outliers, uint8_t off, uint8_t *d,
                                                                  float *scale, int32_t *sum) {
    const float amax = masked_amax(x, len, outliers ? isout : NULL);
    const float inv = amax > 0.f ? 127.f / amax : 0.f;
    *scale = amax > 0.f ? amax / 127.f : 0.f;
    int32_t t8[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= len; i += 8)
        for (int j = 0; j < 8; ++j) {
            const int32_t q = quantize_value(x[i + j], inv) & keep_mask(outliers ? isout[i + j] : 0); /* outliers: 0 */
            t8[j] += q;
            d[i + j] = (uint8_t)(q + off);
        }
    for (; i < len; ++i) {
        const int32_t q = quantize_value(x[i], inv) & keep_mask(outliers ? isout[i] : 0);
        t8[0] += q;
        d[i] = (uint8_t)(q + off);
    }
    int32_t total = 0;
    for (int j = 0; j < 8; ++j) total += t8[j];
    *sum = total;
}

/* int4: row m's activations with one int8 scale per scale group (as MatMulNBits' int8 path
 * quantizes them: a row's few large channels then cost only their own group's precision);
 * scale[g] = amax_g / 127 over the group's non-outlier channels, the same rounding as quantize_row. */
QC_CLONES static void quantize_row_groups(const qc_matmul *w, const float *a, uint8_t *dst, float *scale, int32_t *sum,
                                          uint8_t off) {
    for (int64_t g = 0, k0 = 0; k0 < w->K; ++g, k0 += w->gs) {
        const int64_t len = w->K - k0 < w->gs ? w->K - k0 : w->gs;
        uint8_t *d = dst + g * w->gsp;
        memset(d + len, off, (size_t)(w->gsp - len));
        if (w->n_out)
            quantize_group(a + k0, len, w->is_outlier + k0, 1, off, d, scale + g, sum + g);
        else
            quantize_group(a + k0, len, NULL, 0, off, d, scale + g, sum + g);
    }
}

/* int4's group end: the exact integer dot of (code - z) and the int8 activations, s = acc - corr[c]
 * + (8 - z[c]) x asum[m], then facc[m][c] (+)= ((float)s * scale[c]) * as[m] (per-row, per-group
 * activation scales). In uint32, wrapping like the kernels' int32 sums (exact while a group's sums
 * fit in int32: groups up to ~2 million elements; int64 arithmetic made this loop scalar, the op
 * 2.3x slower on 2048 x 2048, M = 64). */
QC_CLONES static void group_epilogue(const int32_t *acc, const int32_t *corr, const uint8_t *zp, const float *scale,
                                     const float *as, const int32_t *asum, size_t stride, int64_t M, int first,
                                     float *facc) {
    uint32_t zd[32];
    for (int c = 0; c < 32; ++c) zd[c] = 8u - (uint32_t)zp[c];
    for (int64_t m = 0; m < M; ++m) {
        const float sa = as[m * (int64_t)stride];
        const uint32_t sum = (uint32_t)asum[m * (int64_t)stride];
        for (int c = 0; c < 32; ++c) {
            const int32_t v = (int32_t)((uint32_t)acc[m * 32 + c] - (uint32_t)corr[c] + zd[c] * sum);
            const float x = ((float)v * scale[c]) * sa;
            facc[m * 32 + c] = first ? x : facc[m * 32 + c] + x;
        }
    }
}

/* Rows m0 .. m0 + Mr of column block cb from their group sums: the row scale (int4: 1, applied per
 * group), outliers, bias, stored to Y. */
QC_CLONES static void finish_rows(const gemm_ctx *r, const float *facc, int64_t m0, int64_t Mr, int64_t cb) {
    const qc_matmul *w = r->w;
    const int64_t n0 = cb * 32;
    for (int64_t m = 0; m < Mr; ++m) {
        const int64_t row = m0 + m;
        const float *a = r->A + row * w->K;
        float *y = r->Y + row * w->N;
        const float ts = w->kind == QC_INT4 ? 1.f : r->as[row];
        if (n0 + 32 <= w->N)
            qc_finish_block(w, a, facc + m * 32, ts, y, n0, 32);
        else
            qc_finish_block(w, a, facc + m * 32, ts, y, n0, (int)(w->N - n0));
    }
}

QC_CLONES static void gemm_task(void *p, size_t t) {
    const gemm_ctx *r = (const gemm_ctx *)p;
    const qc_matmul *w = r->w;
    const int64_t cb = (int64_t)t / r->parts, m0 = ((int64_t)t % r->parts) * GEMM_ROWS;
    const int64_t Mr = r->M - m0 < GEMM_ROWS ? r->M - m0 : GEMM_ROWS;
    const int64_t G = w->gemm_G, Lq = w->gemm_lq;
    float facc[GEMM_ROWS * 32] __attribute__((aligned(32)));
    if (r->direct) { /* int4 below i4_direct_max_m: straight from the packed records, no tile */
        w->isa->i4_direct(w->i4 + cb * G * Lq * 64, G, Lq, (const int8_t *)r->aq + m0 * r->KL, (size_t)r->KL,
                          r->as + m0 * G, r->asum + m0 * G, (size_t)G, w->gscale + cb * G * 32, w->i4zp + cb * G * 32,
                          Mr, facc);
        finish_rows(r, facc, m0, Mr, cb);
        return;
    }
    int8_t tile[GEMM_CHUNK_Q * 128] __attribute__((aligned(32)));
    int32_t acc[GEMM_ROWS * 32] __attribute__((aligned(32))); /* 2 x 16 KB: fine on pool threads' stacks */
    const int offset = w->isa->i8_act_offset, group_scales = w->kind == QC_INT4;
    for (int64_t g = 0; g < G; ++g) {
        const int32_t *ws = w->gwsum + (cb * G + g) * 32;
        int32_t corr[32];
        for (int c = 0; c < 32; ++c) corr[c] = offset ? 128 * ws[c] : 0;
        const qc_gemm_epi epi = {corr, w->gscale + (cb * G + g) * 32, facc, g == 0};
        /* the int32 sums stay in registers when the group is one chunk (groups of <= 256) */
        for (int64_t q0 = 0; q0 < Lq; q0 += GEMM_CHUNK_Q) {
            const int nq = (int)(Lq - q0 < GEMM_CHUNK_Q ? Lq - q0 : GEMM_CHUNK_Q);
            decode_tile(w, cb, g, q0, nq, tile);
            w->isa->i8_gemm(r->aq + m0 * r->KL + (g * Lq + q0) * 4, (size_t)r->KL, tile, nq, Mr, w->gemm_small, acc,
                            q0 > 0, q0 + nq >= Lq && !group_scales ? &epi : NULL);
        }
        if (group_scales)
            group_epilogue(acc, corr, w->i4zp + (cb * G + g) * 32, epi.scale, r->as + m0 * G + g,
                           r->asum + m0 * G + g, (size_t)G, Mr, g == 0, facc);
    }
    finish_rows(r, facc, m0, Mr, cb);
}

enum { QUANT_ROWS = 16, QUANT_PAR_MIN = 1 << 15 }; /* rows per quantize task; M x K from which it is split */

typedef struct quant_ctx {
    const qc_matmul *w;
    const float *A;
    int64_t M, KL, stride;
    uint8_t *aq;
    float *as;
    int32_t *asum;
    uint8_t off; /* 128: activations stored unsigned (the tile kernels' i8_act_offset), 0: signed */
} quant_ctx;

static void quant_task(void *p, size_t t) {
    const quant_ctx *q = (const quant_ctx *)p;
    const int64_t m1 = ((int64_t)t + 1) * QUANT_ROWS < q->M ? ((int64_t)t + 1) * QUANT_ROWS : q->M;
    for (int64_t m = (int64_t)t * QUANT_ROWS; m < m1; ++m)
        if (q->w->kind == QC_INT4)
            quantize_row_groups(q->w, q->A + m * q->w->K, q->aq + m * q->stride, q->as + m * q->w->G,
                                q->asum + m * q->w->G, q->off);
        else
            quantize_row(q->w, q->A + m * q->w->K, q->aq + m * q->stride, q->KL, q->as + m);
}

int qc_gemm_run(const qc_matmul *w, const float *A, int64_t M, float *Y, qc_parallel_fn par, void *host) {
    const int64_t KL = w->gemm_G * w->gemm_lq * 4;
    /* row stride an odd multiple of 64 bytes: rows 2 KB / 4 KB apart all fell in the same L1 sets
     * (the kernel reads 4-6 rows at once; measured 27% faster on K = 4096) */
    const int64_t stride = ((KL + 63) / 64 | 1) * 64;
    uint8_t *aq = (uint8_t *)malloc((size_t)(M * stride));
    const int64_t ng = w->kind == QC_INT4 ? w->G : 1; /* activation scales per row */
    float *as = (float *)malloc((size_t)(M * ng) * sizeof(float));
    int32_t *asum = w->kind == QC_INT4 ? (int32_t *)malloc((size_t)(M * ng) * sizeof(int32_t)) : NULL;
    if (!aq || !as || (w->kind == QC_INT4 && !asum)) { free(aq); free(as); free(asum); return -1; }
    /* rows quantized on the pool too (a serial prologue of 6-8% of the op held 2 threads back) */
    const int direct = w->kind == QC_INT4 && M < w->i4_direct_max_m; /* reads the activations signed */
    const quant_ctx qc = {w, A, M, KL, stride, aq, as, asum, (uint8_t)(!direct && w->isa->i8_act_offset ? 128 : 0)};
    const size_t qtasks = (size_t)cdiv(M, QUANT_ROWS);
    if (par && qtasks > 1 && M * w->K >= QUANT_PAR_MIN)
        par(host, quant_task, (void *)&qc, qtasks);
    else
        for (size_t t = 0; t < qtasks; ++t) quant_task((void *)&qc, t);
    gemm_ctx r = {w, A, M, Y, aq, as, asum, stride, cdiv(M, GEMM_ROWS), direct};
    /* tasks: column block major, then parts of 128 rows (a block's decoded weights stay in cache) */
    const size_t total = (size_t)(w->gemm_ncb * r.parts);
    if (par && total > 1)
        par(host, gemm_task, &r, total);
    else
        for (size_t i = 0; i < total; ++i) gemm_task(&r, i);
    free(aq); free(as); free(asum);
    return 0;
}
