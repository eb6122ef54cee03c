/* AVX2 loops of the batched int8 path (gemm_int8.c): the register-blocked kernel and the ternary
 * decoder. maddubs reads the activations unsigned (stored + 128) and the decoded weights signed:
 * pair sums <= 2 * 255 * 64 never saturate; with |w| <= 1 (ternary, 1-bit codes) they are <= 510,
 * so 64 kernel rows sum in int16 (2 instructions per 32 multiply-adds instead of 3). */
#include "qc_internal.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#include <string.h>

/* t[2r + i]: row r, columns 16h + 8i .. + 7 of the block: the running int32 sums, or the group's
 * float epilogue in the portable order (convert, mul, then add). Always inlined into the kernels
 * with n a constant, the group's corrections and scales loaded once and `first` tested once: as a
 * loop with those in it, the epilogue of groups of 32 elements took ~45% of the kernel. */
static inline __attribute__((always_inline)) void finish(const __m256i *t, const int n, const int small, int32_t *acc,
                                                         int acc_in, const qc_gemm_epi *epi, int h) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i s[12];
    for (int k = 0; k < n; ++k) {
        const int r = k / 2, c = 16 * h + 8 * (k & 1);
        s[k] = small ? _mm256_madd_epi16(t[k], ones) : t[k];
        if (acc_in) s[k] = _mm256_add_epi32(s[k], _mm256_loadu_si256((const __m256i *)(acc + r * 32 + c)));
        if (!epi) _mm256_storeu_si256((__m256i *)(acc + r * 32 + c), s[k]);
    }
    if (!epi) return;
    const __m256i corr[2] = {_mm256_loadu_si256((const __m256i *)(epi->corr + 16 * h)),
                             _mm256_loadu_si256((const __m256i *)(epi->corr + 16 * h + 8))};
    const __m256 scale[2] = {_mm256_loadu_ps(epi->scale + 16 * h), _mm256_loadu_ps(epi->scale + 16 * h + 8)};
    float *f = epi->facc + 16 * h;
    if (epi->first) {
        for (int k = 0; k < n; ++k)
            _mm256_storeu_ps(f + (k / 2) * 32 + 8 * (k & 1),
                             _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(s[k], corr[k & 1])), scale[k & 1]));
    } else {
        for (int k = 0; k < n; ++k) {
            float *fk = f + (k / 2) * 32 + 8 * (k & 1);
            const __m256 x = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(s[k], corr[k & 1])), scale[k & 1]);
            _mm256_storeu_ps(fk, _mm256_add_ps(_mm256_loadu_ps(fk), x));
        }
    }
}

/* R rows x 16 columns (two registers of 8 columns x 4 elements) with the accumulators as named
 * variables: with arrays GCC copied every accumulator once per step (8-12 extra moves). */
#define QC_DECL(i) __m256i c##i##0 = _mm256_setzero_si256(), c##i##1 = c##i##0;
typedef int32_t qc_i32u __attribute__((may_alias, aligned(1)));
#define QC_BCAST(i) b = _mm256_set1_epi32(*(const qc_i32u *)(a + (i) * as + 4 * q));
/* small: int16 sums (pairs <= 510, at most 64 rows); otherwise pairs widened to int32 by madd */
#define QC_STEP_S(i) { QC_BCAST(i) c##i##0 = _mm256_add_epi16(c##i##0, _mm256_maddubs_epi16(b, w0)); \
                       c##i##1 = _mm256_add_epi16(c##i##1, _mm256_maddubs_epi16(b, w1)); }
#define QC_STEP_B(i) { QC_BCAST(i) \
        c##i##0 = _mm256_add_epi32(c##i##0, _mm256_madd_epi16(_mm256_maddubs_epi16(b, w0), ones)); \
        c##i##1 = _mm256_add_epi32(c##i##1, _mm256_madd_epi16(_mm256_maddubs_epi16(b, w1), ones)); }
#define QC_SAVE(i) t[2 * (i)] = c##i##0; t[2 * (i) + 1] = c##i##1;
#define QC_R1(X, ...) X(0 __VA_ARGS__)
#define QC_R2(X, ...) QC_R1(X, __VA_ARGS__) X(1 __VA_ARGS__)
#define QC_R3(X, ...) QC_R2(X, __VA_ARGS__) X(2 __VA_ARGS__)
#define QC_R4(X, ...) QC_R3(X, __VA_ARGS__) X(3 __VA_ARGS__)
#define QC_R5(X, ...) QC_R4(X, __VA_ARGS__) X(4 __VA_ARGS__)
#define QC_R6(X, ...) QC_R5(X, __VA_ARGS__) X(5 __VA_ARGS__)
#define QC_KERNEL16(name, RR, RN, STEP, small)  QC_KERNEL16A(, name, RR, RN, STEP, small)
#define QC_KERNEL16A(attrs, name, RR, RN, STEP, small)                                                    \
    attrs static void name(const uint8_t *a, size_t as, const int8_t *wt, int nq, int32_t *acc, int acc_in,            \
                     const qc_gemm_epi *epi, int h) {                                                         \
        RR(QC_DECL)                                                                                          \
        for (int q = 0; q < nq; ++q) {                                                                       \
            const __m256i ones = _mm256_set1_epi16(1);                                                       \
            __m256i b;                                                                                       \
            const __m256i w0 = _mm256_load_si256((const __m256i *)(wt + q * 128));                           \
            const __m256i w1 = _mm256_load_si256((const __m256i *)(wt + q * 128 + 32));                      \
            RR(STEP)                                                                                         \
            (void)ones;                                                                                      \
        }                                                                                                    \
        /* through an array: using the named variables after the loop made GCC spill them in it */          \
        __m256i t[12];                                                                                       \
        RR(QC_SAVE)                                                                                          \
        finish(t, 2 * RN, small, acc, acc_in, epi, h);                                                       \
    }
QC_KERNEL16(ks1, QC_R1, 1, QC_STEP_S, 1) QC_KERNEL16(ks2, QC_R2, 2, QC_STEP_S, 1) QC_KERNEL16(ks3, QC_R3, 3, QC_STEP_S, 1)
QC_KERNEL16(ks4, QC_R4, 4, QC_STEP_S, 1) QC_KERNEL16(ks5, QC_R5, 5, QC_STEP_S, 1) QC_KERNEL16(ks6, QC_R6, 6, QC_STEP_S, 1)
QC_KERNEL16(kb1, QC_R1, 1, QC_STEP_B, 0) QC_KERNEL16(kb2, QC_R2, 2, QC_STEP_B, 0) QC_KERNEL16(kb3, QC_R3, 3, QC_STEP_B, 0)
QC_KERNEL16(kb4, QC_R4, 4, QC_STEP_B, 0) QC_KERNEL16(kb5, QC_R5, 5, QC_STEP_B, 0)

/* AVX-VNNI (VEX vpdpbusd, 256-bit): the four u8 x s8 products of a column summed into int32 in one
 * instruction, no saturation, no int16 stage; 6 rows x 16 columns (12 accumulators). */
#define QC_STEP_V(i) { QC_BCAST(i) c##i##0 = _mm256_dpbusd_avx_epi32(c##i##0, b, w0); \
                       c##i##1 = _mm256_dpbusd_avx_epi32(c##i##1, b, w1); }
#define QC_VNNI __attribute__((target("avxvnni")))
QC_KERNEL16A(QC_VNNI, kv1, QC_R1, 1, QC_STEP_V, 0) QC_KERNEL16A(QC_VNNI, kv2, QC_R2, 2, QC_STEP_V, 0)
QC_KERNEL16A(QC_VNNI, kv3, QC_R3, 3, QC_STEP_V, 0) QC_KERNEL16A(QC_VNNI, kv4, QC_R4, 4, QC_STEP_V, 0)
QC_KERNEL16A(QC_VNNI, kv5, QC_R5, 5, QC_STEP_V, 0) QC_KERNEL16A(QC_VNNI, kv6, QC_R6, 6, QC_STEP_V, 0)

typedef void (*qc_k16)(const uint8_t *, size_t, const int8_t *, int, int32_t *, int, const qc_gemm_epi *, int);
static const qc_k16 kSmall[7] = {0, ks1, ks2, ks3, ks4, ks5, ks6}, kBig[6] = {0, kb1, kb2, kb3, kb4, kb5};
static const qc_k16 kVnni[7] = {0, kv1, kv2, kv3, kv4, kv5, kv6};

void qc_i8_gemm_avxvnni(const uint8_t *a, size_t as, const int8_t *wt, int nq, int64_t M, int small, int32_t *acc,
                        int acc_in, const qc_gemm_epi *epi) {
    (void)small;
    for (int64_t m = 0; m < M; m += 6) {
        const int r = (int)(M - m < 6 ? M - m : 6);
        qc_gemm_epi e;
        if (epi) e = (qc_gemm_epi){epi->corr, epi->scale, epi->facc + m * 32, epi->first};
        for (int h = 0; h < 2; ++h)
            kVnni[r](a + m * as, as, wt + 64 * h, nq, acc + m * 32, acc_in, epi ? &e : NULL, h);
    }
}

void qc_i8_gemm_avx2(const uint8_t *a, size_t as, const int8_t *wt, int nq, int64_t M, int small, int32_t *acc,
                     int acc_in, const qc_gemm_epi *epi) {
    const int R = small ? 6 : 5; /* 2R accumulators + 2 weights + broadcast / temporaries <= 16 registers */
    const qc_k16 *k = small ? kSmall : kBig;
    for (int64_t m = 0; m < M; m += R) {
        const int r = (int)(M - m < R ? M - m : R);
        qc_gemm_epi e;
        if (epi) e = (qc_gemm_epi){epi->corr, epi->scale, epi->facc + m * 32, epi->first};
        for (int h = 0; h < 2; ++h) /* columns 0-15, 16-31 */
            k[r](a + m * as, as, wt + 64 * h, nq, acc + m * 32, acc_in, epi ? &e : NULL, h);
    }
}

/* Paired ternary step records -> kernel rows. Column c (< 8 per lane pair) gets plane a from byte
 * 2c and plane b from byte 2c + 1 of its record half; bit j of the low (c < 16) or high nibble is
 * element j; w = a + b - 1 = ~(-a - b) with the bit tests as 0 / -1 masks. */
static void decode_ternary(const uint8_t *rec, int nq, int8_t *wt) {
    const __m256i ia = _mm256_setr_epi8(0, 0, 0, 0, 2, 2, 2, 2, 4, 4, 4, 4, 6, 6, 6, 6, 8, 8, 8, 8, 10, 10, 10, 10, 12,
                                        12, 12, 12, 14, 14, 14, 14);
    const __m256i ib = _mm256_add_epi8(ia, _mm256_set1_epi8(1));
    const __m256i mlo = _mm256_set1_epi32(0x08040201), mhi = _mm256_set1_epi32((int)0x80402010u);
    const __m256i all = _mm256_set1_epi8(-1);
    for (int q = 0; q < nq; ++q) {
        const __m256i x = _mm256_loadu_si256((const __m256i *)(rec + (size_t)q * 32));
        for (int h = 0; h < 2; ++h) { /* h = 0: columns 0-7 and 16-23; h = 1: 8-15 and 24-31 */
            const __m256i xs = h ? _mm256_permute4x64_epi64(x, 0xEE) : _mm256_permute4x64_epi64(x, 0x44);
            const __m256i A = _mm256_shuffle_epi8(xs, ia), B = _mm256_shuffle_epi8(xs, ib);
            const __m256i lo = _mm256_xor_si256(
                _mm256_add_epi8(_mm256_cmpeq_epi8(_mm256_and_si256(A, mlo), mlo), _mm256_cmpeq_epi8(_mm256_and_si256(B, mlo), mlo)),
                all);
            const __m256i hi = _mm256_xor_si256(
                _mm256_add_epi8(_mm256_cmpeq_epi8(_mm256_and_si256(A, mhi), mhi), _mm256_cmpeq_epi8(_mm256_and_si256(B, mhi), mhi)),
                all);
            _mm256_store_si256((__m256i *)(wt + (size_t)q * 128 + 32 * h), lo);
            _mm256_store_si256((__m256i *)(wt + (size_t)q * 128 + 64 + 32 * h), hi);
        }
    }
}

/* A binary-code step record in the paired layout (qc_isa.lut_binary_pair: column c's nibbles of
 * lookup groups 2s, 2s + 1 in bytes 2(c%16), 2(c%16) + 1, low nibbles for c < 16) -> the plain one
 * (byte c = group 2s | group 2s + 1 << 4). Per 16-bit word (even byte E, odd byte O) of column
 * pair j: columns j + 8l get E & 15 | (O & 15) << 4, columns 16 + j + 8l get E >> 4 | O & 0xF0. */
static inline __m256i unpair_record(const uint8_t *rec, int paired) {
    const __m256i x = _mm256_loadu_si256((const __m256i *)rec);
    if (!paired) return x;
    const __m256i m0f = _mm256_set1_epi16(0x000F), mf0 = _mm256_set1_epi16(0x00F0);
    const __m256i x4 = _mm256_srli_epi16(x, 4);
    const __m256i lo = _mm256_or_si256(_mm256_and_si256(x, m0f), _mm256_and_si256(x4, mf0));
    const __m256i hi = _mm256_or_si256(_mm256_and_si256(x4, m0f), _mm256_and_si256(_mm256_srli_epi16(x, 8), mf0));
    /* packus per lane: [0-7 | 16-23], [8-15 | 24-31] -> columns in order */
    return _mm256_permute4x64_epi64(_mm256_packus_epi16(lo, hi), 0xD8);
}

/* v[c] holds column c's 32 int8 values in element order (8 dwords = 8 kernel rows): transposed
 * by 8 x 8 dwords to kernel rows 0-7 of columns c0 .. c0 + 7 (row i at wt + 128 i + 4 c0). */
static inline void store_transposed8(const __m256i *v, int8_t *wt, int c0) {
    const __m256i t0 = _mm256_unpacklo_epi32(v[0], v[1]), t1 = _mm256_unpackhi_epi32(v[0], v[1]);
    const __m256i t2 = _mm256_unpacklo_epi32(v[2], v[3]), t3 = _mm256_unpackhi_epi32(v[2], v[3]);
    const __m256i t4 = _mm256_unpacklo_epi32(v[4], v[5]), t5 = _mm256_unpackhi_epi32(v[4], v[5]);
    const __m256i t6 = _mm256_unpacklo_epi32(v[6], v[7]), t7 = _mm256_unpackhi_epi32(v[6], v[7]);
    const __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);
    const __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);
    const __m256i u4 = _mm256_unpacklo_epi64(t4, t6), u5 = _mm256_unpackhi_epi64(t4, t6);
    const __m256i u6 = _mm256_unpacklo_epi64(t5, t7), u7 = _mm256_unpackhi_epi64(t5, t7);
    const __m256i r[8] = {_mm256_permute2x128_si256(u0, u4, 0x20), _mm256_permute2x128_si256(u1, u5, 0x20),
                          _mm256_permute2x128_si256(u2, u6, 0x20), _mm256_permute2x128_si256(u3, u7, 0x20),
                          _mm256_permute2x128_si256(u0, u4, 0x31), _mm256_permute2x128_si256(u1, u5, 0x31),
                          _mm256_permute2x128_si256(u2, u6, 0x31), _mm256_permute2x128_si256(u3, u7, 0x31)};
    for (int i = 0; i < 8; ++i) _mm256_store_si256((__m256i *)(wt + 128 * i + 4 * c0), r[i]);
}

/* Binary codes, 4 steps (32 elements, 8 kernel rows) at a time: per plane, byte c of 4 records
 * transposed to one 32-bit word per column (bit e = element e), spread to a byte per element,
 * the plane bits combined into the code, and the column's 16-entry value table looked up. */
static int decode_binary(const qc_matmul *w, int64_t cb, int64_t g, int64_t q0, int nq, int8_t *wt) {
    const int64_t P = w->n_planes, G = w->G, S = w->steps;
    const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3,
                                            3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    const __m256i pm1 = _mm256_setr_epi8(-1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, -1, 1, 0, 0, 0, 0, 0, 0, 0, 0,
                                         0, 0, 0, 0, 0, 0);
    __m256i tab[32];
    for (int c = 0; c < 32; ++c) {
        const int64_t n = cb * 32 + c;
        if (P == 1)
            tab[c] = pm1; /* -1 / +1 */
        else if (n < w->N)
            tab[c] = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(w->gvt + (n * G + g) * 16)));
        else
            tab[c] = _mm256_setzero_si256();
    }
    int done = 0;
    for (; done + 8 <= nq; done += 8) {
        const int64_t s = (q0 + done) / 2;
        uint32_t bits[4][32];
        for (int64_t p = 0; p < P; ++p) {
            const uint8_t *rec = w->nib + (((cb * P + p) * G + g) * S + s) * 32;
            const int pr = w->isa->lut_binary_pair;
            const __m256i r0 = unpair_record(rec, pr), r1 = unpair_record(rec + 32, pr);
            const __m256i r2 = unpair_record(rec + 64, pr), r3 = unpair_record(rec + 96, pr);
            const __m256i x01l = _mm256_unpacklo_epi8(r0, r1), x23l = _mm256_unpacklo_epi8(r2, r3);
            const __m256i x01h = _mm256_unpackhi_epi8(r0, r1), x23h = _mm256_unpackhi_epi8(r2, r3);
            const __m256i v[4] = {_mm256_unpacklo_epi16(x01l, x23l), _mm256_unpackhi_epi16(x01l, x23l),
                                  _mm256_unpacklo_epi16(x01h, x23h), _mm256_unpackhi_epi16(x01h, x23h)};
            for (int i = 0; i < 4; ++i) { /* v[i]: columns 4i..4i+3 (low lane) and 16+4i.. (high lane) */
                _mm_storeu_si128((__m128i *)(bits[p] + 4 * i), _mm256_castsi256_si128(v[i]));
                _mm_storeu_si128((__m128i *)(bits[p] + 16 + 4 * i), _mm256_extracti128_si256(v[i], 1));
            }
        }
        for (int c0 = 0; c0 < 32; c0 += 8) {
            __m256i vals[8];
            for (int c = 0; c < 8; ++c) {
                __m256i code = _mm256_setzero_si256();
                for (int64_t p = 0; p < P; ++p) {
                    const __m256i b = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits[p][c0 + c]), spread);
                    const __m256i m = _mm256_cmpeq_epi8(_mm256_and_si256(b, bit), bit);
                    code = _mm256_or_si256(code, _mm256_and_si256(m, _mm256_set1_epi8((char)(1 << p))));
                }
                vals[c] = _mm256_shuffle_epi8(tab[c0 + c], code);
            }
            store_transposed8(vals, wt + (size_t)done * 128, c0);
        }
    }
    return done;
}

/* Codebooks, 128-element chunks: per column, 32 index bytes give 32 low-nibble (elements j..j+31)
 * and 32 high-nibble (64 + j ..) indices, looked up in the column's centroid table. */
static int decode_codebook(const qc_matmul *w, int64_t cb, int64_t q0, int nq, int8_t *wt) {
    if (q0 % 32) return 0;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256i tab[32];
    for (int c = 0; c < 32; ++c) {
        const int64_t n = cb * 32 + c;
        tab[c] = n < w->N ? _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(w->gvt + n * 16)))
                          : _mm256_setzero_si256();
    }
    int done = 0;
    for (; done + 32 <= nq; done += 32) { /* one 128-element chunk: kernel rows 0-15 low, 16-31 high */
        const int64_t t = (q0 + done) * 4 / QC_CB_KB;
        for (int c0 = 0; c0 < 32; c0 += 8) {
            if (cb * 32 + c0 >= w->N) { /* past the interleaved columns that exist: zeros */
                for (int i = 0; i < 32; ++i) _mm256_store_si256((__m256i *)(wt + (size_t)(done + i) * 128 + 4 * c0), _mm256_setzero_si256());
                continue;
            }
            const uint8_t *base = w->cbnib + ((cb * 32 + c0) / 8) * 8 * (w->kp / 2) + t * 512;
            for (int h = 0; h < 2; ++h) { /* bytes 32h .. 32h + 31 */
                __m256i lo[8], hi[8];
                for (int c = 0; c < 8; ++c) {
                    const __m256i v = _mm256_loadu_si256((const __m256i *)(base + c * 64 + 32 * h));
                    lo[c] = _mm256_shuffle_epi8(tab[c0 + c], _mm256_and_si256(v, m4));
                    hi[c] = _mm256_shuffle_epi8(tab[c0 + c], _mm256_and_si256(_mm256_srli_epi16(v, 4), m4));
                }
                store_transposed8(lo, wt + (size_t)(done + 8 * h) * 128, c0);
                store_transposed8(hi, wt + (size_t)(done + 16 + 8 * h) * 128, c0);
            }
        }
    }
    return done;
}

/* Binary codes with 1-3 planes straight into the kernel layout (no transposes): per kernel row
 * (4 elements; step s = row / 2, nibble = row % 2) and 8 columns, each plane's byte of a column is
 * copied to its 4 element slots and bit-tested, the plane bits form the code, and one lane-wide
 * table lookup gives the value: a lane (4 columns) holds the 4 codes x 4 columns of 2 planes, or
 * 8 codes x 2 columns of 3 planes (two tables, blended by column). 1 plane: 2 bit - 1. */
static int decode_binary_rows(const qc_matmul *w, int64_t cb, int64_t g, int64_t q0, int nq, int8_t *wt) {
    const int64_t P = w->n_planes, G = w->G, S = w->steps;
    const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 6, 6,
                                            6, 6, 7, 7, 7, 7);
    const __m256i mlo = _mm256_set1_epi32(0x08040201), mhi = _mm256_set1_epi32((int)0x80402010u);
    const __m256i ofs2 = _mm256_setr_epi8(0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12, 0, 0, 0, 0, 4, 4, 4, 4, 8,
                                          8, 8, 8, 12, 12, 12, 12);
    const __m256i ofs3 = _mm256_setr_epi8(0, 0, 0, 0, 8, 8, 8, 8, 0, 0, 0, 0, 8, 8, 8, 8, 0, 0, 0, 0, 8, 8, 8, 8, 0, 0,
                                          0, 0, 8, 8, 8, 8);
    const __m256i sel3 = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, -128, -128, -128, -128, -128, -128, -128, -128, 0, 0,
                                          0, 0, 0, 0, 0, 0, -128, -128, -128, -128, -128, -128, -128, -128);
    const __m256i one = _mm256_set1_epi8(1), two = _mm256_set1_epi8(2);
    __m256i ta[4], tb[4]; /* per 8 columns: the lane tables */
    for (int v = 0; v < 4 && P > 1; ++v) {
        int8_t t[2][32];
        memset(t, 0, sizeof t);
        for (int c = 0; c < 8; ++c) {
            const int64_t n = cb * 32 + 8 * v + c;
            const int lane = c / 4, j = c % 4;
            if (n >= w->N) continue;
            const int8_t *vt = w->gvt + (n * G + g) * 16;
            if (P == 2)
                memcpy(&t[0][16 * lane + 4 * j], vt, 4);
            else
                memcpy(&t[j / 2][16 * lane + 8 * (j % 2)], vt, 8);
        }
        ta[v] = _mm256_loadu_si256((const __m256i *)t[0]);
        tb[v] = _mm256_loadu_si256((const __m256i *)t[1]);
    }
    for (int i = 0; i < nq; ++i) {
        const int64_t q = q0 + i, s = q >> 1;
        const __m256i mask = (q & 1) ? mhi : mlo;
        __m256i rec[3] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
        for (int64_t p = 0; p < P; ++p)
            rec[p] = unpair_record(w->nib + (((cb * P + p) * G + g) * S + s) * 32, w->isa->lut_binary_pair);
        for (int v = 0; v < 4; ++v) {
            __m256i code = _mm256_setzero_si256();
            for (int64_t p = 0; p < P; ++p) {
                const __m256i x = v == 0 ? _mm256_permute4x64_epi64(rec[p], 0x00)
                                  : v == 1 ? _mm256_permute4x64_epi64(rec[p], 0x55)
                                  : v == 2 ? _mm256_permute4x64_epi64(rec[p], 0xAA)
                                           : _mm256_permute4x64_epi64(rec[p], 0xFF);
                const __m256i m = _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(x, spread), mask), mask);
                code = _mm256_or_si256(code, _mm256_and_si256(m, p == 0 ? one : p == 1 ? two : _mm256_set1_epi8(4)));
            }
            __m256i val;
            if (P == 1)
                val = _mm256_sub_epi8(_mm256_add_epi8(code, code), one); /* 2 bit - 1 */
            else if (P == 2)
                val = _mm256_shuffle_epi8(ta[v], _mm256_or_si256(code, ofs2));
            else {
                const __m256i ix = _mm256_or_si256(code, ofs3);
                val = _mm256_blendv_epi8(_mm256_shuffle_epi8(ta[v], ix), _mm256_shuffle_epi8(tb[v], ix), sel3);
            }
            _mm256_store_si256((__m256i *)(wt + (size_t)i * 128 + 32 * v), val);
        }
    }
    return nq;
}

/* int4 records (prepack_int4) -> kernel rows: low and high nibbles of each 32-byte half, minus 8. */
static void decode_int4(const uint8_t *rec, int nq, int8_t *wt) {
    const __m256i m = _mm256_set1_epi8(15), eight = _mm256_set1_epi8(8);
    for (int q = 0; q < nq; ++q, rec += 64, wt += 128) {
        const __m256i x0 = _mm256_loadu_si256((const __m256i *)rec), x1 = _mm256_loadu_si256((const __m256i *)(rec + 32));
        _mm256_store_si256((__m256i *)wt, _mm256_sub_epi8(_mm256_and_si256(x0, m), eight));
        _mm256_store_si256((__m256i *)(wt + 32), _mm256_sub_epi8(_mm256_and_si256(_mm256_srli_epi16(x0, 4), m), eight));
        _mm256_store_si256((__m256i *)(wt + 64), _mm256_sub_epi8(_mm256_and_si256(x1, m), eight));
        _mm256_store_si256((__m256i *)(wt + 96), _mm256_sub_epi8(_mm256_and_si256(_mm256_srli_epi16(x1, 4), m), eight));
    }
}

int qc_i8_decode_avx2(const qc_matmul *w, int64_t cb, int64_t g, int64_t q0, int nq, int8_t *wt) {
    if (w->kind == QC_INT4) {
        decode_int4(w->i4 + ((cb * w->G + g) * w->gemm_lq + q0) * 64, nq, wt);
        return nq;
    }
    if (w->kind == QC_TERNARY) {
        decode_ternary(w->nib + ((cb * w->G + g) * w->steps + q0) * 32, nq, wt);
        return nq;
    }
    if (w->kind == QC_BINARY)
        return w->n_planes <= 3 ? decode_binary_rows(w, cb, g, q0, nq, wt) : (q0 & 1) ? 0 : decode_binary(w, cb, g, q0, nq, wt);
    return decode_codebook(w, cb, q0, nq, wt);
}
#else
typedef int qc_gemm_int8_avx2_unused;
#endif
