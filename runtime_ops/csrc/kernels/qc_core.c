/* Common C of the qcompiler kernels: prepacking, drivers, activation tables, epilogue,
 * PackedGather. Compiled with -ffp-contract=off: every float operation here is rounded as
 * written, identically on every ISA. The per-ISA inner loops sit behind qc_isa. */
#include "qc_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif
#ifndef QC_THP
#define QC_THP 1
#endif

/* The drivers' own loops (epilogues, activation quantization) vectorize 8 floats wide when built
 * for AVX2 too; element-wise float ops with -ffp-contract=off give the same bits either way. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(QC_NO_CLONES)
#define QC_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define QC_CLONES
#endif

typedef float qc_v8f __attribute__((vector_size(32)));

static const float kTernaryValue[4] = {0.f, 1.f, 0.f, -1.f}; /* 0b10 reads as 0 */

static inline unsigned get_code(const uint8_t *row, int64_t rb, int64_t k, int b) {
    int64_t bp = k * b, by = bp >> 3;
    unsigned sh = (unsigned)(bp & 7), v = row[by];
    if (sh + (unsigned)b > 8 && by + 1 < rb) v |= (unsigned)row[by + 1] << 8;
    return (v >> sh) & ((1u << b) - 1u);
}

/* ceil(a / b) for a >= 0, b > 0; (a + b - 1) / b would overflow for b near INT64_MAX. */
static int64_t ceil_div(int64_t a, int64_t b) { return a / b + (a % b != 0); }

/* Zeroed buffer for the prepacked weights; large ones 2 MB aligned, their whole 2 MB pages marked
 * for transparent huge pages (streamed from memory once per run: fewer TLB misses; the tail stays
 * in small pages, so no memory is added). Freed with free(). */
static void *weights_calloc(size_t n) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const size_t huge = (size_t)2 << 20;
    if (QC_THP && n >= huge) {
        void *p = NULL;
        if (posix_memalign(&p, huge, n)) return NULL;
        madvise(p, n & ~(huge - 1), MADV_HUGEPAGE);
        memset(p, 0, n);
        return p;
    }
#endif
    return calloc(n, 1);
}
static int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

/* ---------------------------------------------------------------- dequantization (fma path) */
/* kSpread[v]: bit j of the byte v moved to bit 0 of byte j (eight 1-bit codes -> eight bytes, read
 * little-endian as on x86-64 and aarch64). */
#define QC_S1(v) ((uint64_t)((v) & 1) | (uint64_t)((v) >> 1 & 1) << 8 | (uint64_t)((v) >> 2 & 1) << 16 | \
                  (uint64_t)((v) >> 3 & 1) << 24 | (uint64_t)((v) >> 4 & 1) << 32 | (uint64_t)((v) >> 5 & 1) << 40 | \
                  (uint64_t)((v) >> 6 & 1) << 48 | (uint64_t)((v) >> 7 & 1) << 56)
#define QC_R2(n) QC_S1(n), QC_S1(n + 1), QC_S1(n + 2), QC_S1(n + 3)
#define QC_R4(n) QC_R2(n), QC_R2(n + 4), QC_R2(n + 8), QC_R2(n + 12)
#define QC_R6(n) QC_R4(n), QC_R4(n + 16), QC_R4(n + 32), QC_R4(n + 48)
static const uint64_t kSpread[256] = {QC_R6(0), QC_R6(64), QC_R6(128), QC_R6(192)};

/* Codes of column n for elements [k0, k0 + kb), k0 a multiple of 8, one combined code per element:
 * ternary / codebook the b-bit code, binary codes bit i = the sign bit of plane i. */
static void column_codes(const qc_matmul *w, int64_t n, int64_t k0, int kb, uint8_t *codes) {
    if (w->kind == QC_BINARY) {
        memset(codes, 0, (size_t)kb);
        for (int64_t i = 0; i < w->n_planes; ++i) {
            const uint8_t *row = w->packed + (i * w->N + n) * w->row_bytes + k0 / 8;
            int kk = 0;
            for (; kk + 8 <= kb; kk += 8) { /* eight codes at once, byte j = code of element kk + j */
                uint64_t c8;
                memcpy(&c8, codes + kk, 8);
                c8 |= kSpread[row[kk >> 3]] << i;
                memcpy(codes + kk, &c8, 8);
            }
            for (; kk < kb; ++kk) codes[kk] |= (uint8_t)(((row[kk >> 3] >> (kk & 7)) & 1u) << i);
        }
        return;
    }
    const int b = w->kind == QC_TERNARY ? 2 : w->bits;
    const uint8_t *row = w->packed + n * w->row_bytes;
    if (b == 2) { /* whole bytes first: no code straddles a byte */
        const uint8_t *r = row + k0 / 4;
        int kk = 0;
        for (; kk + 4 <= kb; kk += 4) {
            const unsigned v = r[kk >> 2];
            codes[kk] = (uint8_t)(v & 3u);
            codes[kk + 1] = (uint8_t)((v >> 2) & 3u);
            codes[kk + 2] = (uint8_t)((v >> 4) & 3u);
            codes[kk + 3] = (uint8_t)(v >> 6);
        }
        for (; kk < kb; ++kk) codes[kk] = (uint8_t)((r[kk >> 2] >> ((kk & 3) * 2)) & 3u);
    } else if (b == 4) {
        const uint8_t *r = row + k0 / 2;
        int kk = 0;
        for (; kk + 2 <= kb; kk += 2) {
            const unsigned v = r[kk >> 1];
            codes[kk] = (uint8_t)(v & 15u);
            codes[kk + 1] = (uint8_t)(v >> 4);
        }
        if (kk < kb) codes[kk] = (uint8_t)(r[kk >> 1] & 15u);
    } else {
        for (int kk = 0; kk < kb; ++kk) codes[kk] = (uint8_t)get_code(row, w->row_bytes, k0 + kk, b);
    }
}

/* The weight value of every code of column n in group g, computed as the reference does. */
static void value_table(const qc_matmul *w, int64_t n, int64_t g, float *vt) {
    switch (w->kind) {
    case QC_TERNARY: {
        const float s = w->scales[n * w->G + g];
        for (int c = 0; c < 4; ++c) vt[c] = s * kTernaryValue[c];
        break;
    }
    case QC_BINARY:
        for (int code = 0; code < (1 << w->n_planes); ++code) {
            float v = 0.f;
            for (int64_t i = 0; i < w->n_planes; ++i)
                v = v + w->scales[(i * w->N + n) * w->G + g] * ((code >> i) & 1 ? 1.f : -1.f);
            vt[code] = v;
        }
        break;
    case QC_INT4: {
        const float s = w->scales[n * w->G + g];
        const int z = w->zp[n * w->G + g];
        for (int e = 0; e < 16; ++e) vt[e] = s * (float)(e - z);
        break;
    }
    default:
        for (int e = 0; e < (1 << w->bits); ++e) vt[e] = w->scales[(n << w->bits) + e];
    }
}

/* panel[kk][c] = W[k0 + kk, n0 + c] (0 for c >= nc and for outlier channels). */
static void dequant_panel(const qc_matmul *w, int64_t n0, int nc, int64_t k0, int kb, float *panel) {
    uint8_t codes[QC_FMA_KB];
    float vt[16];
    for (int c = 0; c < QC_FMA_COLS; ++c) {
        if (c >= nc) {
            for (int kk = 0; kk < kb; ++kk) panel[kk * QC_FMA_COLS + c] = 0.f;
            continue;
        }
        const int b = w->kind == QC_TERNARY ? 2 : w->kind == QC_CODEBOOK ? w->bits : w->kind == QC_INT4 ? 4 : 0;
        if (b != 2 && b != 4) column_codes(w, n0 + c, k0, kb, codes);
        const uint8_t *row = w->packed + (n0 + c) * w->row_bytes + k0 * b / 8;
        float *pc = panel + c;
        for (int kk = 0; kk < kb;) {
            const int64_t g = (k0 + kk) / w->gs;
            const int64_t g_end = (g + 1) * w->gs - k0;
            const int end = g_end < kb ? (int)g_end : kb;
            value_table(w, n0 + c, g, vt);
            if (b == 2) { /* whole bytes straight from the packed row */
                for (; kk + 4 <= end && (kk & 3) == 0; kk += 4) {
                    const unsigned v = row[kk >> 2];
                    pc[kk * QC_FMA_COLS] = vt[v & 3u];
                    pc[(kk + 1) * QC_FMA_COLS] = vt[(v >> 2) & 3u];
                    pc[(kk + 2) * QC_FMA_COLS] = vt[(v >> 4) & 3u];
                    pc[(kk + 3) * QC_FMA_COLS] = vt[v >> 6];
                }
                for (; kk < end; ++kk) pc[kk * QC_FMA_COLS] = vt[(row[kk >> 2] >> ((kk & 3) * 2)) & 3u];
            } else if (b == 4) {
                for (; kk + 2 <= end && (kk & 1) == 0; kk += 2) {
                    const unsigned v = row[kk >> 1];
                    pc[kk * QC_FMA_COLS] = vt[v & 15u];
                    pc[(kk + 1) * QC_FMA_COLS] = vt[v >> 4];
                }
                for (; kk < end; ++kk) pc[kk * QC_FMA_COLS] = vt[(row[kk >> 1] >> ((kk & 1) * 4)) & 15u];
            } else {
                for (; kk < end; ++kk) pc[kk * QC_FMA_COLS] = vt[codes[kk]];
            }
        }
    }
    for (int64_t j = 0; j < w->n_out; ++j) { /* packed rows of outlier channels are ignored */
        const int64_t k = w->oidx[j];
        if (k >= k0 && k < k0 + kb)
            for (int c = 0; c < QC_FMA_COLS; ++c) panel[(k - k0) * QC_FMA_COLS + c] = 0.f;
    }
}

/* ------------------------------------------------------------------------------ prepacking */
/* Ternary code (0b01 +1, 0b11 -1, else 0) as two sign bits a, b with w = (a + b) / 2. */
static inline void ternary_planes(unsigned code, unsigned *a, unsigned *b) {
    *a = code != 3u;
    *b = code == 1u;
}

/* The `epg` b-bit codes of lookup group q of scale group g in one nibble (element j at bit j*b);
 * padding past the group or K reads as code 0. */
static inline unsigned binary_nibble(const qc_matmul *w, const uint8_t *codes, int64_t g, int64_t q, int epg, int b) {
    unsigned nibble = 0;
    for (int j = 0; j < epg; ++j) {
        const int64_t off = q * epg + j, k = g * w->gs + off;
        if (off < w->glen && k < w->K) nibble |= (unsigned)codes[k] << (j * b);
    }
    return nibble;
}

/* Binary codes: 32 columns per block, each step two 4-element lookups (low / high nibble).
 * Ternary: each step one 4-element lookup of both sign planes, paired in adjacent bytes. */
static void prepack_lut(qc_matmul *w) {
    const int pair = w->kind == QC_TERNARY;
    const int epg = 4, step_el = pair ? 4 : 8;
    w->epg = epg;
    w->glen = w->gs < w->K ? w->gs : w->K;
    w->gsp = round_up(w->glen, step_el);
    w->steps = (int)(w->gsp / step_el);
    w->Kv = w->G * w->gsp;
    w->Q = w->Kv / epg;
    w->ncb = ceil_div(w->N, QC_LUT_COLS);
    const int64_t P = w->n_planes, G = w->G, S = w->steps;
    w->nib = (uint8_t *)weights_calloc((size_t)(w->ncb * P * G * S * 32));
    w->lscales = (float *)calloc((size_t)(w->ncb * P * G * 32), sizeof(float));
    uint8_t *codes = (uint8_t *)malloc((size_t)w->K + 1);
    if (!w->nib || !w->lscales || !codes) { free(codes); return; }
    for (int64_t p = 0; p < P; ++p) {
        for (int64_t n = 0; n < w->N; ++n) {
            const uint8_t *row = w->packed + (p * w->N + n) * w->row_bytes;
            const int b = w->kind == QC_TERNARY ? 2 : 1;
            for (int64_t k = 0; k < w->K; ++k) codes[k] = (uint8_t)get_code(row, w->row_bytes, k, b);
            const int64_t cb = n / 32, c = n % 32;
            for (int64_t g = 0; g < G; ++g) {
                /* x 0.5 (exact): the paired lookups sum to twice the ternary partial sum */
                w->lscales[((cb * P + p) * G + g) * 32 + c] = w->scales[(p * w->N + n) * G + g] * (pair ? 0.5f : 1.f);
                if (pair) {
                    const int sh = c < 16 ? 0 : 4, j0 = 2 * (int)(c % 16);
                    for (int64_t s = 0; s < S; ++s) {
                        unsigned na = 0, nb = 0;
                        for (int j = 0; j < 4; ++j) {
                            const int64_t off = s * 4 + j, k = g * w->gs + off;
                            unsigned a = 1, b = 0; /* padding and outlier channels: zero (activation 0 too) */
                            if (off < w->glen && k < w->K) ternary_planes(codes[k], &a, &b);
                            na |= a << j;
                            nb |= b << j;
                        }
                        uint8_t *dst = w->nib + (((cb * P + p) * G + g) * S + s) * 32 + j0;
                        dst[0] |= (uint8_t)(na << sh);
                        dst[1] |= (uint8_t)(nb << sh);
                    }
                    continue;
                }
                if (w->isa->lut_binary_pair) { /* the paired layout of binary codes: see qc_kernels.h */
                    const int sh = c < 16 ? 0 : 4, j0 = 2 * (int)(c % 16);
                    for (int64_t s = 0; s < S; ++s)
                        for (int h = 0; h < 2; ++h)
                            w->nib[(((cb * P + p) * G + g) * S + s) * 32 + j0 + h] |=
                                (uint8_t)(binary_nibble(w, codes, g, s * 2 + h, epg, b) << sh);
                    continue;
                }
                for (int64_t s = 0; s < S; ++s)
                    w->nib[(((cb * P + p) * G + g) * S + s) * 32 + c] =
                        (uint8_t)(binary_nibble(w, codes, g, s * 2, epg, b) | binary_nibble(w, codes, g, s * 2 + 1, epg, b) << 4);
            }
        }
    }
    free(codes);
}

/* Level 0 through fp32 tables: 3-element steps, a byte (3-bit index) per column and plane; ternary
 * as two paired sign planes (plane a bytes 0-31, plane b bytes 32-63 of a step). */
static void prepack_flut(qc_matmul *w) {
    const int pair = w->kind == QC_TERNARY, step_bytes = pair ? 64 : 32;
    w->epg = 3;
    w->glen = w->gs < w->K ? w->gs : w->K;
    w->gsp = round_up(w->glen, 3);
    w->steps = (int)(w->gsp / 3);
    w->Kv = w->G * w->gsp;
    w->Q = w->Kv / 3;
    w->ncb = ceil_div(w->N, QC_LUT_COLS);
    const int64_t P = w->n_planes, G = w->G, S = w->steps;
    w->nib = (uint8_t *)calloc((size_t)(w->ncb * P * G * S * step_bytes), 1);
    w->lscales = (float *)calloc((size_t)(w->ncb * P * G * 32), sizeof(float));
    uint8_t *codes = (uint8_t *)malloc((size_t)w->K + 1);
    if (!w->nib || !w->lscales || !codes) { free(codes); return; }
    for (int64_t p = 0; p < P; ++p)
        for (int64_t n = 0; n < w->N; ++n) {
            const uint8_t *row = w->packed + (p * w->N + n) * w->row_bytes;
            for (int64_t k = 0; k < w->K; ++k) codes[k] = (uint8_t)get_code(row, w->row_bytes, k, pair ? 2 : 1);
            const int64_t cb = n / 32, c = n % 32;
            for (int64_t g = 0; g < G; ++g) {
                w->lscales[((cb * P + p) * G + g) * 32 + c] = w->scales[(p * w->N + n) * G + g] * (pair ? 0.5f : 1.f);
                for (int64_t s = 0; s < S; ++s) {
                    unsigned ia = 0, ib = 0;
                    for (int j = 0; j < 3; ++j) {
                        const int64_t off = s * 3 + j, k = g * w->gs + off;
                        const int valid = off < w->glen && k < w->K; /* padding: activation 0 */
                        unsigned a = 1, b = 0;
                        if (pair && valid) ternary_planes(codes[k], &a, &b);
                        if (!pair) a = valid ? codes[k] : 0u;
                        ia |= a << j;
                        ib |= b << j;
                    }
                    uint8_t *dst = w->nib + (((cb * P + p) * G + g) * S + s) * step_bytes;
                    dst[c] = (uint8_t)ia;
                    if (pair) dst[32 + c] = (uint8_t)ib;
                }
            }
        }
    free(codes);
}

static void prepack_codebook(qc_matmul *w) {
    const int64_t E = (int64_t)1 << w->bits;
    w->kp = round_up(w->K, QC_CB_KB);
    w->cbnib = (uint8_t *)weights_calloc((size_t)(round_up(w->N, 8) * (w->kp / 2)));
    w->cbq = (int8_t *)calloc((size_t)(w->N * 16), 1);
    w->cbsum = (int32_t *)calloc((size_t)w->N, sizeof(int32_t));
    w->cbs = (float *)calloc((size_t)w->N, sizeof(float));
    if (!w->cbnib || !w->cbq || !w->cbsum || !w->cbs) return;
    for (int64_t n = 0; n < w->N; ++n) {
        const uint8_t *row = w->packed + n * w->row_bytes;
        uint8_t *dst = w->cbnib + (n / 8) * 8 * (w->kp / 2) + (n % 8) * 64; /* chunk t at dst + 512 t */
        for (int64_t k = 0; k < w->K; ++k) { /* padding k >= K keeps index 0 (its activation is 0) */
            unsigned c = get_code(row, w->row_bytes, k, w->bits);
            int64_t t = k / QC_CB_KB, j = k % QC_CB_KB;
            dst[t * 512 + (j & 63)] |= (uint8_t)(c << (j >= 64 ? 4 : 0));
        }
        const float *cb = w->scales + n * E;
        float amax = 0.f;
        for (int64_t e = 0; e < E; ++e) amax = fabsf(cb[e]) > amax ? fabsf(cb[e]) : amax;
        float inv = amax > 0.f ? 127.f / amax : 0.f;
        w->cbs[n] = amax > 0.f ? amax / 127.f : 0.f;
        for (int64_t e = 0; e < E; ++e) {
            long q = lrintf(cb[e] * inv);
            w->cbq[n * 16 + e] = (int8_t)(q > 127 ? 127 : q < -127 ? -127 : q);
        }
        int32_t sum = 0;
        for (int64_t t = 0; t < w->kp / QC_CB_KB; ++t)
            for (int64_t i = t * 512; i < t * 512 + 64; ++i)
                sum += w->cbq[n * 16 + (dst[i] & 15)] + w->cbq[n * 16 + (dst[i] >> 4)];
        w->cbsum[n] = sum;
    }
}

/* int4 codes for the batched int8 path, in the order its decoded tile wants them: per block of 32
 * columns, scale group g and kernel row q (4 elements of the group), 64 bytes; tile byte t =
 * 4c + j (column c, element 4q + j) is nibble (t & 32 ? high : low) of byte (t & 31) + (t >= 64 ?
 * 32 : 0), so one 32-byte load gives two 32-byte tile rows by a mask and a shift. The tile holds
 * code - 8 (|value| <= 8: the int16 kernels apply); the zero point's part, (8 - z) x the group's
 * activation sum, is added in the batched path's epilogue. Padding elements and columns and outlier
 * channels hold code 8 (value 0). */
static void prepack_int4(qc_matmul *w) {
    w->glen = w->gs < w->K ? w->gs : w->K;
    w->gsp = round_up(w->glen, 4);
    w->ncb = ceil_div(w->N, 32);
    const int64_t lq = w->gsp / 4, G = w->G;
    w->i4 = (uint8_t *)weights_calloc((size_t)(w->ncb * G * lq * 64));
    w->i4zp = (uint8_t *)malloc((size_t)(w->ncb * G * 32));
    if (!w->i4 || !w->i4zp) return;
    memset(w->i4, 0x88, (size_t)(w->ncb * G * lq * 64));
    memset(w->i4zp, 8, (size_t)(w->ncb * G * 32));
    int vmax = 0;
    for (int64_t n = 0; n < w->N; ++n) {
        const uint8_t *row = w->packed + n * w->row_bytes;
        const int64_t cb = n / 32, c = n % 32;
        for (int64_t g = 0; g < G; ++g) {
            const unsigned z = w->zp[n * G + g];
            w->i4zp[(cb * G + g) * 32 + c] = (uint8_t)z;
            for (int64_t off = 0; off < w->gsp; ++off) {
                const int64_t k = g * w->gs + off;
                const int valid = off < w->glen && k < w->K && !w->is_outlier[k];
                const unsigned code = valid ? (row[k >> 1] >> ((k & 1) * 4)) & 15u : 8u;
                const int v = (int)code - 8;
                vmax = v > vmax ? v : -v > vmax ? -v : vmax;
                const int64_t q = off / 4, t = 4 * c + off % 4;
                uint8_t *b = w->i4 + ((cb * G + g) * lq + q) * 64 + (t & 31) + (t >= 64 ? 32 : 0);
                const unsigned sh = t & 32 ? 4u : 0u;
                *b = (uint8_t)((*b & ~(15u << sh)) | code << sh);
            }
        }
    }
    w->i4_max = vmax;
}

qc_matmul *qc_matmul_create(const qc_matmul_desc *d, const qc_isa *isa) {
    qc_matmul *w = (qc_matmul *)calloc(1, sizeof(qc_matmul));
    if (!w) return NULL;
    w->kind = d->kind; w->bits = d->kind == QC_INT4 ? 4 : d->bits; w->level = d->accuracy_level;
    w->K = d->K; w->N = d->N; w->gs = d->group_size > 0 ? d->group_size : d->K;
    w->G = ceil_div(w->K, w->gs);
    w->isa = isa ? isa : qc_isa_get();
    w->n_planes = d->kind == QC_BINARY ? d->bits : 1;
    const int code_bits = d->kind == QC_TERNARY ? 2 : d->kind == QC_BINARY ? 1 : w->bits;
    w->row_bytes = ceil_div(w->K * code_bits, 8);
    const size_t packed_bytes = (size_t)(w->n_planes * w->N * w->row_bytes);
    const size_t n_scales = d->kind == QC_CODEBOOK ? (size_t)(w->N << d->bits) : (size_t)(w->n_planes * w->N * w->G);
    w->packed = (uint8_t *)malloc(packed_bytes + 1);
    w->scales = (float *)malloc(n_scales * sizeof(float) + 1);
    w->is_outlier = (uint8_t *)calloc((size_t)w->K, 1);
    w->n_out = d->n_out;
    w->oidx = (int64_t *)malloc((size_t)d->n_out * sizeof(int64_t) + 1);
    w->ow = (float *)malloc((size_t)(d->n_out * w->N) * sizeof(float) + 1);
    w->bias = d->bias ? (float *)malloc((size_t)w->N * sizeof(float)) : NULL;
    if (!w->packed || !w->scales || !w->is_outlier || !w->oidx || !w->ow || (d->bias && !w->bias)) {
        qc_matmul_free(w);
        return NULL;
    }
    memcpy(w->packed, d->packed, packed_bytes);
    memcpy(w->scales, d->scales, n_scales * sizeof(float));
    if (d->n_out) {
        memcpy(w->oidx, d->outlier_idx, (size_t)d->n_out * sizeof(int64_t));
        memcpy(w->ow, d->outlier_w, (size_t)(d->n_out * w->N) * sizeof(float));
        for (int64_t j = 0; j < d->n_out; ++j) w->is_outlier[w->oidx[j]] = 1;
    }
    if (d->bias) memcpy(w->bias, d->bias, (size_t)w->N * sizeof(float));
    if (w->kind == QC_INT4) { /* zero points unpacked, one byte per (column, group) */
        w->zp = (uint8_t *)malloc((size_t)(w->N * w->G));
        if (!w->zp) { qc_matmul_free(w); return NULL; }
        const int64_t zrb = ceil_div(w->G, 2);
        for (int64_t n = 0; n < w->N; ++n)
            for (int64_t g = 0; g < w->G; ++g)
                w->zp[n * w->G + g] = d->zero_points ? (uint8_t)((d->zero_points[n * zrb + g / 2] >> ((g & 1) * 4)) & 15u) : 8;
    }

    w->path = PATH_FMA;
    if (w->kind == QC_INT4) { /* the fma path at level 0; level 4 runs the batched int8 path at every M */
        if (w->level >= 4) {
            prepack_int4(w);
            if (!w->i4 || !w->i4zp) { qc_matmul_free(w); return NULL; }
        }
    } else if (w->level >= 4 && w->kind == QC_CODEBOOK) {
        prepack_codebook(w);
        if (!w->cbnib || !w->cbq || !w->cbsum || !w->cbs) { qc_matmul_free(w); return NULL; }
        w->path = PATH_CB;
    } else if (w->level >= 4) {
        const int64_t step_el = w->kind == QC_TERNARY ? 4 : 8;
        const int64_t glen = w->gs < w->K ? w->gs : w->K;
        const int64_t kv = w->G * round_up(glen, step_el);
        if (kv * 3 <= w->K * 4 + 3 * step_el) { /* padding waste at most ~1/3 */
            prepack_lut(w);
            if (!w->nib || !w->lscales) { qc_matmul_free(w); return NULL; }
            w->path = PATH_LUT;
            /* indices over 2 MB (twice this machine's L2) mostly come from memory: software prefetch
             * measured ~8% faster there and ~4% slower on indices resident in L2/L3 */
            const char *pf = getenv("QCOMPILER_PREFETCH"); /* 0 / 1 force it (tests, benchmarks) */
            w->prefetch = w->isa->lut_block_pf && w->isa->lut_pair_block_pf &&
                          (pf && *pf ? *pf == '1' : w->ncb * w->n_planes * w->G * w->steps * 32 > ((int64_t)2 << 20));
        }
    } else if (w->kind == QC_CODEBOOK && w->isa->cbf_dot && w->bits == 4) {
        prepack_codebook(w);
        if (!w->cbnib || !w->cbq || !w->cbsum || !w->cbs) { qc_matmul_free(w); return NULL; }
        w->path = PATH_CBF;
    } else if (w->kind != QC_CODEBOOK && w->isa->flut_block) {
        const int64_t glen = w->gs < w->K ? w->gs : w->K;
        if (w->G * round_up(glen, 3) * 3 <= w->K * 4 + 9) { /* padding waste at most ~1/3 */
            prepack_flut(w);
            if (!w->nib || !w->lscales) { qc_matmul_free(w); return NULL; }
            w->path = PATH_FLUT;
        }
    }
    if (qc_gemm_prepare(w)) { qc_matmul_free(w); return NULL; } /* the batched int8 path, where it applies */
    /* only the fma path reads the contract bytes: keep one copy of the weights (int4 at level 4
     * takes the fma path only when QCOMPILER_GEMM_MIN_M moves the batched one) */
    if (w->path != PATH_FMA || (w->kind == QC_INT4 && w->gemm_min_m == 1)) {
        free(w->packed);
        w->packed = NULL;
    }
    return w;
}

void qc_matmul_free(qc_matmul *w) {
    if (!w) return;
    free(w->packed); free(w->scales); free(w->is_outlier); free(w->oidx); free(w->ow); free(w->bias);
    free(w->nib); free(w->lscales); free(w->cbnib); free(w->cbq); free(w->cbsum); free(w->cbs); free(w->i4); free(w->zp); free(w->i4zp);
    qc_gemm_free(w);
    free(w);
}

const char *qc_matmul_path(const qc_matmul *w) {
    return w->path == PATH_LUT ? "lut" : w->path == PATH_CB ? "cb_i8" : w->path == PATH_FLUT ? "lut_f32"
                                                                                     : w->path == PATH_CBF ? "cb_f32" : "fma";
}

const char *qc_matmul_path_for(const qc_matmul *w, int64_t M) {
    return w->gemm_min_m > 0 && M >= w->gemm_min_m ? "gemm_i8" : qc_matmul_path(w);
}

/* ------------------------------------------------------------------------------- the runs */
typedef struct run_ctx {
    const qc_matmul *w;
    const float *A;
    int64_t M;
    float *Y;
    int64_t cols_per_task;
    const int8_t *tables;   /* lut: [M][Q][16] */
    const float *ftables;   /* lut_f32: [M][Q][8] */
    const float *tscale;    /* lut: [M]; cb: activation scales */
    const int8_t *aq;       /* cb: [M][kp] */
    const int32_t *asum;    /* cb: [M] sums of aq rows */
    const float *ap;        /* cb_f32: [M][kp] zero-padded activations, outlier channels 0 */
} run_ctx;

/* Outliers then bias on columns [n0, n1), in the reference's order. */
QC_CLONES static void epilogue(const qc_matmul *w, const float *A, int64_t M, float *Y, int64_t n0, int64_t n1) {
    for (int64_t m = 0; m < M; ++m) {
        float *y = Y + m * w->N;
        const float *a = A + m * w->K;
        for (int64_t j = 0; j < w->n_out; ++j) {
            const float av = a[w->oidx[j]];
            const float *o = w->ow + j * w->N;
            for (int64_t n = n0; n < n1; ++n) y[n] = y[n] + av * o[n];
        }
        if (w->bias)
            for (int64_t n = n0; n < n1; ++n) y[n] = y[n] + w->bias[n];
    }
}

static void fma_task(void *p, size_t t) {
    const run_ctx *r = (const run_ctx *)p;
    const qc_matmul *w = r->w;
    float panel[QC_FMA_KB * QC_FMA_COLS];
    int64_t n_begin = (int64_t)t * r->cols_per_task, n_end = n_begin + r->cols_per_task;
    if (n_end > w->N) n_end = w->N;
    for (int64_t m = 0; m < r->M; ++m)
        for (int64_t n = n_begin; n < n_end; ++n) r->Y[m * w->N + n] = 0.f;
    for (int64_t n0 = n_begin; n0 < n_end; n0 += QC_FMA_COLS) {
        int nc = (int)(n_end - n0 < QC_FMA_COLS ? n_end - n0 : QC_FMA_COLS);
        for (int64_t k0 = 0; k0 < w->K; k0 += QC_FMA_KB) {
            int kb = (int)(w->K - k0 < QC_FMA_KB ? w->K - k0 : QC_FMA_KB);
            dequant_panel(w, n0, nc, k0, kb, panel);
            w->isa->fma_panel((int)r->M, r->A + k0, (size_t)w->K, panel, kb, r->Y + n0, (size_t)w->N, nc);
        }
    }
    epilogue(w, r->A, r->M, r->Y, n_begin, n_end);
}

QC_CLONES static void lut_task(void *p, size_t t) {
    const run_ctx *r = (const run_ctx *)p;
    const qc_matmul *w = r->w;
    const int64_t P = w->n_planes, G = w->G, S = w->steps;
    const int64_t cb_per_task = r->cols_per_task / QC_LUT_COLS;
    int64_t cb0 = (int64_t)t * cb_per_task, cb1 = cb0 + cb_per_task;
    if (cb1 > w->ncb) cb1 = w->ncb;
    float acc[4 * QC_LUT_COLS] __attribute__((aligned(32)));
    for (int64_t cb = cb0; cb < cb1; ++cb) {
        for (int64_t m = 0; m < r->M; m += 4) {
            const int R = (int)(r->M - m < 4 ? r->M - m : 4);
            /* whole aligned 32-byte stores (one ymm store in the AVX2 clone): the kernels load acc
             * as ymm right away, and a load spanning two smaller stores misses store forwarding */
            for (int i = 0; i < R * QC_LUT_COLS; i += 8) *(qc_v8f *)(acc + i) = (qc_v8f){0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
            if (w->path == PATH_FLUT)
                for (int64_t p = 0; p < P; ++p)
                    w->isa->flut_block(w->nib + ((cb * P + p) * G) * S * (P == 1 && w->kind == QC_TERNARY ? 64 : 32),
                                       r->ftables + m * w->Q * 8, (size_t)(w->Q * 8),
                                       w->lscales + ((cb * P + p) * G) * 32, (int)G, (int)S, w->kind == QC_TERNARY, R,
                                       acc);
            else if (w->kind == QC_TERNARY)
                (w->prefetch ? w->isa->lut_pair_block_pf : w->isa->lut_pair_block)(w->nib + cb * G * S * 32, r->tables + m * w->Q * 16, (size_t)(w->Q * 16),
                                       w->lscales + cb * G * 32, (int)G, (int)S, R, acc);
            else
                for (int64_t p = 0; p < P; ++p)
                    (w->prefetch ? w->isa->lut_block_pf : w->isa->lut_block)(w->nib + ((cb * P + p) * G) * S * 32, r->tables + m * w->Q * 16,
                                      (size_t)(w->Q * 16), w->lscales + ((cb * P + p) * G) * 32, (int)G, (int)S,
                                      R, acc);
            const int64_t n0 = cb * QC_LUT_COLS;
            for (int rr = 0; rr < R; ++rr) {
                const float *a = r->A + (m + rr) * w->K;
                float *y = r->Y + (m + rr) * w->N;
                if (n0 + QC_LUT_COLS <= w->N)
                    qc_finish_block(w, a, acc + rr * 32, r->tscale[m + rr], y, n0, QC_LUT_COLS);
                else
                    qc_finish_block(w, a, acc + rr * 32, r->tscale[m + rr], y, n0, (int)(w->N - n0));
            }
        }
    }
}

QC_CLONES static void cb_task(void *p, size_t t) {
    const run_ctx *r = (const run_ctx *)p;
    const qc_matmul *w = r->w;
    int64_t n0 = (int64_t)t * r->cols_per_task, n1 = n0 + r->cols_per_task;
    if (n1 > w->N) n1 = w->N;
    int32_t s[4 * 8];
    for (int64_t n = n0; n < n1; n += 8) {
        const int NC = (int)(n1 - n < 8 ? n1 - n : 8);
        for (int64_t m = 0; m < r->M; m += 4) {
            const int R = (int)(r->M - m < 4 ? r->M - m : 4);
            w->isa->cb_dot(w->cbnib + n * (w->kp / 2), w->cbq + n * 16, w->cbsum + n, r->asum + m, NC, r->aq + m * w->kp,
                           (size_t)w->kp, (int)w->kp, R, s);
            for (int rr = 0; rr < R; ++rr) {
                float *y = r->Y + (m + rr) * w->N + n;
                const float ts = r->tscale[m + rr];
                for (int c = 0; c < NC; ++c) y[c] = ((float)s[rr * 8 + c] * ts) * w->cbs[n + c];
            }
        }
    }
    epilogue(w, r->A, r->M, r->Y, n0, n1);
}

/* av: the row's activations by group, each padded with zeros to whole steps; outlier channels 0. */
static void gather_activations(const qc_matmul *w, const float *a, float *av) {
    for (int64_t g = 0; g < w->G; ++g) { /* groups padded to whole steps with zeros */
        float *dst = av + g * w->gsp;
        const int64_t k0 = g * w->gs, len = w->K - k0 < w->glen ? w->K - k0 : w->glen;
        memcpy(dst, a + k0, (size_t)len * sizeof(float));
        for (int64_t off = len; off < w->gsp; ++off) dst[off] = 0.f;
    }
    for (int64_t j = 0; j < w->n_out; ++j) { /* outlier channels are computed in fp32 */
        const int64_t k = w->oidx[j], g = k / w->gs;
        av[g * w->gsp + (k - g * w->gs)] = 0.f;
    }
}

/* fp32 tables of the 8 signed 3-sums: entry e = ((+-x0) + (+-x1)) + (+-x2), sign j from bit j of e. */
static void build_ftables(const qc_matmul *w, const float *a, float *av, float *T) {
    gather_activations(w, a, av);
    for (int64_t q = 0; q < w->Q; ++q) {
        const float *x = av + q * 3;
        for (int e = 0; e < 8; ++e)
            T[q * 8 + e] = ((e & 1 ? x[0] : -x[0]) + (e & 2 ? x[1] : -x[1])) + (e & 4 ? x[2] : -x[2]);
    }
}

/* Per-row int8 tables of activation partial sums (signed 4-sums) and their scale. */
QC_CLONES static void build_tables(const qc_matmul *w, const float *a, float *av, int8_t *T, float *tscale) {
    gather_activations(w, a, av);
    /* the largest 4-sum of |x|: every table entry is within it (up to rounding); max is exact in any
     * order, so four independent maxima (no dependency chain) */
    float m4[4] = {0.f, 0.f, 0.f, 0.f};
    int64_t q = 0;
    for (; q + 4 <= w->Q; q += 4)
        for (int u = 0; u < 4; ++u) {
            const float *x = av + (q + u) * 4;
            const float s = (fabsf(x[0]) + fabsf(x[1])) + (fabsf(x[2]) + fabsf(x[3]));
            m4[u] = s > m4[u] ? s : m4[u];
        }
    for (; q < w->Q; ++q) {
        const float *x = av + q * 4;
        const float s = (fabsf(x[0]) + fabsf(x[1])) + (fabsf(x[2]) + fabsf(x[3]));
        m4[0] = s > m4[0] ? s : m4[0];
    }
    float amax = m4[0] > m4[1] ? m4[0] : m4[1];
    amax = amax > m4[2] ? amax : m4[2];
    amax = amax > m4[3] ? amax : m4[3];
    const float inv = amax > 0.f ? 127.f / amax : 0.f;
    *tscale = amax > 0.f ? amax / 127.f : 0.f;
    w->isa->lut_tables(av, w->Q, inv, T);
}

static void cbf_task(void *p, size_t t) {
    const run_ctx *r = (const run_ctx *)p;
    const qc_matmul *w = r->w;
    int64_t n0 = (int64_t)t * r->cols_per_task, n1 = n0 + r->cols_per_task;
    if (n1 > w->N) n1 = w->N;
    float s[4 * 8];
    for (int64_t n = n0; n < n1; n += 8) {
        const int NC = (int)(n1 - n < 8 ? n1 - n : 8);
        for (int64_t m = 0; m < r->M; m += 4) {
            const int R = (int)(r->M - m < 4 ? r->M - m : 4);
            w->isa->cbf_dot(w->cbnib + n * (w->kp / 2), w->scales + n * 16, NC, r->ap + m * w->kp, (size_t)w->kp,
                            (int)w->kp, R, s);
            for (int rr = 0; rr < R; ++rr)
                for (int c = 0; c < NC; ++c) r->Y[(m + rr) * w->N + n + c] = s[rr * 8 + c];
        }
    }
    epilogue(w, r->A, r->M, r->Y, n0, n1);
}

QC_CLONES static void quantize_row_i8(const qc_matmul *w, const float *a, int8_t *q, float *scale, int32_t *sum) {
    float amax = 0.f;
    for (int64_t k = 0; k < w->K; ++k)
        if (!w->is_outlier[k]) amax = fabsf(a[k]) > amax ? fabsf(a[k]) : amax;
    const float inv = amax > 0.f ? 127.f / amax : 0.f;
    *scale = amax > 0.f ? amax / 127.f : 0.f;
    int32_t s = 0;
    for (int64_t k = 0; k < w->kp; ++k) {
        long v = (k < w->K && !w->is_outlier[k]) ? lrintf(a[k] * inv) : 0;
        q[k] = (int8_t)(v > 127 ? 127 : v < -127 ? -127 : v);
        s += q[k];
    }
    *sum = s;
}

static void run_parallel(qc_parallel_fn par, void *host, qc_task_fn fn, void *ctx, size_t total) {
    if (par && total > 1) {
        par(host, fn, ctx, total);
    } else {
        for (size_t i = 0; i < total; ++i) fn(ctx, i);
    }
}

/* Per-row preparation (tables, int8 rows) of the small-M paths, split over the pool in chunks of
 * PREP_ROWS rows from PREP_PAR_MIN activations on: done serially it was a prologue that the second
 * thread waited through (table building: ~20% of a lookup-table op at 128 rows). */
enum { PREP_ROWS = 8, PREP_PAR_MIN = 1 << 13 };

typedef struct prep_ctx {
    const qc_matmul *w;
    const float *A;
    int64_t M;
    int8_t *T;      /* lut tables */
    float *F;       /* lut_f32 tables */
    float *ts;      /* lut: table scales; cb: activation scales; lut_f32: ones */
    int8_t *aq;     /* cb rows */
    int32_t *asum;  /* cb row sums */
    volatile int failed;
} prep_ctx;

static void prep_task(void *p, size_t t) {
    prep_ctx *c = (prep_ctx *)p;
    const qc_matmul *w = c->w;
    const int64_t m0 = (int64_t)t * PREP_ROWS, m1 = m0 + PREP_ROWS < c->M ? m0 + PREP_ROWS : c->M;
    float *av = NULL;
    if (w->path == PATH_LUT || w->path == PATH_FLUT) {
        av = (float *)malloc((size_t)w->Kv * sizeof(float));
        if (!av) { c->failed = 1; return; }
    }
    for (int64_t m = m0; m < m1; ++m) {
        const float *a = c->A + m * w->K;
        if (w->path == PATH_LUT) {
            build_tables(w, a, av, c->T + m * w->Q * 16, c->ts + m);
        } else if (w->path == PATH_FLUT) {
            build_ftables(w, a, av, c->F + m * w->Q * 8);
            c->ts[m] = 1.f; /* the epilogue's table scale: none (x 1 is exact) */
        } else {
            quantize_row_i8(w, a, c->aq + m * w->kp, c->ts + m, c->asum + m);
        }
    }
    free(av);
}

static int prepare_rows(prep_ctx *c, qc_parallel_fn par, void *host) {
    const size_t tasks = (size_t)ceil_div(c->M, PREP_ROWS);
    if (c->M * c->w->K >= PREP_PAR_MIN)
        run_parallel(par, host, prep_task, c, tasks);
    else
        for (size_t t = 0; t < tasks; ++t) prep_task(c, t);
    return c->failed ? -1 : 0;
}

int qc_matmul_run(const qc_matmul *w, const float *A, int64_t M, float *Y, qc_parallel_fn par, void *host) {
    if (M <= 0 || w->N <= 0) return 0;
    if (w->gemm_min_m > 0 && M >= w->gemm_min_m) return qc_gemm_run(w, A, M, Y, par, host);
    run_ctx r = {w, A, M, Y, 0, NULL, NULL, NULL, NULL, NULL, NULL};
    if (w->path == PATH_LUT) {
        int8_t *T = (int8_t *)malloc((size_t)(M * w->Q * 16));
        float *ts = (float *)malloc((size_t)M * sizeof(float));
        prep_ctx c = {w, A, M, T, NULL, ts, NULL, NULL, 0};
        if (!T || !ts || prepare_rows(&c, par, host)) { free(T); free(ts); return -1; }
        r.tables = T; r.tscale = ts;
        r.cols_per_task = 64;
        run_parallel(par, host, lut_task, &r, (size_t)ceil_div(w->ncb, 2));
        free(T); free(ts);
    } else if (w->path == PATH_FLUT) {
        float *T = (float *)malloc((size_t)(M * w->Q * 8) * sizeof(float));
        float *ones = (float *)malloc((size_t)M * sizeof(float));
        prep_ctx c = {w, A, M, NULL, T, ones, NULL, NULL, 0};
        if (!T || !ones || prepare_rows(&c, par, host)) { free(T); free(ones); return -1; }
        r.ftables = T; r.tscale = ones;
        r.cols_per_task = 64;
        run_parallel(par, host, lut_task, &r, (size_t)ceil_div(w->ncb, 2));
        free(T); free(ones);
    } else if (w->path == PATH_CBF) {
        float *ap = (float *)malloc((size_t)(M * w->kp) * sizeof(float));
        if (!ap) return -1;
        for (int64_t m = 0; m < M; ++m) {
            float *d = ap + m * w->kp;
            memcpy(d, A + m * w->K, (size_t)w->K * sizeof(float));
            for (int64_t k = w->K; k < w->kp; ++k) d[k] = 0.f;
            for (int64_t j = 0; j < w->n_out; ++j) d[w->oidx[j]] = 0.f;
        }
        r.ap = ap;
        r.cols_per_task = 32;
        run_parallel(par, host, cbf_task, &r, (size_t)ceil_div(w->N, 32));
        free(ap);
    } else if (w->path == PATH_CB) {
        int8_t *aq = (int8_t *)malloc((size_t)(M * w->kp));
        float *as = (float *)malloc((size_t)M * sizeof(float));
        int32_t *asum = (int32_t *)malloc((size_t)M * sizeof(int32_t));
        prep_ctx c = {w, A, M, NULL, NULL, as, aq, asum, 0};
        if (!aq || !as || !asum || prepare_rows(&c, par, host)) { free(aq); free(as); free(asum); return -1; }
        r.aq = aq; r.tscale = as; r.asum = asum;
        r.cols_per_task = 32;
        run_parallel(par, host, cb_task, &r, (size_t)ceil_div(w->N, 32));
        free(aq); free(as); free(asum);
    } else {
        r.cols_per_task = 32;
        run_parallel(par, host, fma_task, &r, (size_t)ceil_div(w->N, 32));
    }
    return 0;
}

/* ----------------------------------------------------------------------------- PackedGather */
const char *qc_packed_gather_check(const uint8_t *row_bits, const int64_t *row_offsets, int64_t V,
                                   int64_t total_bytes, int64_t D) {
    if (row_offsets[0] < 0) return "row_offsets[0] is negative";
    for (int64_t r = 0; r < V; ++r) {
        const int b = row_bits[r];
        if (b != 2 && b != 4 && b != 8) return "row_bits values must be 2, 4 or 8";
        if (row_offsets[r + 1] < row_offsets[r]) return "row_offsets must be non-decreasing";
        if (row_offsets[r] > total_bytes || ceil_div(D * b, 8) > total_bytes - row_offsets[r])
            return "a row extends past the end of the table";
    }
    if (row_offsets[V] > total_bytes) return "row_offsets[V] exceeds the table size";
    return NULL;
}

int64_t qc_packed_gather(const uint8_t *table, const int64_t *row_offsets, const uint8_t *row_bits,
                         const float *scales, int64_t V, int64_t D, int64_t group_size,
                         const int64_t *idx64, const int32_t *idx32, int64_t n_idx, float *out) {
    const int64_t gs = group_size > 0 ? group_size : D, G = ceil_div(D, gs);
    for (int64_t i = 0; i < n_idx; ++i) {
        int64_t r = idx64 ? idx64[i] : (int64_t)idx32[i];
        if (r < -V || r >= V) return i + 1;
        if (r < 0) r += V;
        const int b = row_bits[r];
        const int64_t rb = ceil_div(D * b, 8);
        const uint8_t *row = table + row_offsets[r];
        const float *s = scales + r * G;
        float *o = out + i * D;
        for (int64_t d = 0; d < D; ++d) {
            int v = (int)get_code(row, rb, d, b);
            if (v >= (1 << (b - 1))) v -= 1 << b;
            o[d] = (float)v * s[d / gs];
        }
    }
    return 0;
}
