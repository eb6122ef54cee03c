/* AVX-512 VNNI kernel of the batched int8 path (gemm_int8.c): vpdpbusd on 512-bit registers, one
 * register per 16 columns x 4 elements, so a kernel row of 32 columns is 2 instructions per row.
 * Same operands as the AVX2 kernel (activations unsigned, stored + 128; decoded weights signed;
 * epi->corr removes the offset): vpdpbusd sums the four u8 x s8 products into int32 without
 * saturation, so the int32 sums and the float epilogue (convert, mul, then add) equal the portable
 * kernel's bit for bit. */
#include "qc_internal.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

typedef int32_t qc_i32u __attribute__((may_alias, aligned(1)));

/* t[2r + h]: row r, columns 16h .. 16h + 15. */
static inline __attribute__((always_inline)) void finish512(const __m512i *t, const int R, int32_t *acc, int acc_in,
                                                             const qc_gemm_epi *epi) {
    for (int k = 0; k < 2 * R; ++k) {
        const int r = k / 2, c = 16 * (k & 1);
        __m512i s = t[k];
        if (acc_in) s = _mm512_add_epi32(s, _mm512_loadu_si512(acc + r * 32 + c));
        if (!epi) {
            _mm512_storeu_si512(acc + r * 32 + c, s);
            continue;
        }
        s = _mm512_sub_epi32(s, _mm512_loadu_si512(epi->corr + c));
        const __m512 x = _mm512_mul_ps(_mm512_cvtepi32_ps(s), _mm512_loadu_ps(epi->scale + c));
        float *f = epi->facc + r * 32 + c;
        _mm512_storeu_ps(f, epi->first ? x : _mm512_add_ps(_mm512_loadu_ps(f), x));
    }
}

/* R rows x 32 columns: 2R accumulators + 2 weight registers, the accumulators as named variables
 * (as arrays, GCC copied every accumulator once per step, as in the AVX2 kernel). */
#define QC_D(i) __m512i c##i##0 = _mm512_setzero_si512(), c##i##1 = c##i##0;
#define QC_S(i) { const __m512i b = _mm512_set1_epi32(*(const qc_i32u *)(a + (i) * as + 4 * q)); \
                  c##i##0 = _mm512_dpbusd_epi32(c##i##0, b, w0); c##i##1 = _mm512_dpbusd_epi32(c##i##1, b, w1); }
#define QC_T(i) t[2 * (i)] = c##i##0; t[2 * (i) + 1] = c##i##1;
#define QC_X1(X) X(0)
#define QC_X2(X) QC_X1(X) X(1)
#define QC_X3(X) QC_X2(X) X(2)
#define QC_X4(X) QC_X3(X) X(3)
#define QC_X5(X) QC_X4(X) X(4)
#define QC_X6(X) QC_X5(X) X(5)
#define QC_X7(X) QC_X6(X) X(6)
#define QC_X8(X) QC_X7(X) X(7)
#define QC_X9(X) QC_X8(X) X(8)
#define QC_X10(X) QC_X9(X) X(9)
#define QC_X11(X) QC_X10(X) X(10)
#define QC_X12(X) QC_X11(X) X(11)
#define QC_K512(R)                                                                                          \
    static void k512_##R(const uint8_t *a, size_t as, const int8_t *wt, int nq, int32_t *acc, int acc_in,     \
                         const qc_gemm_epi *epi) {                                                            \
        QC_X##R(QC_D)                                                                                         \
        for (int q = 0; q < nq; ++q) {                                                                        \
            /* tiles are 32-byte aligned: unaligned loads */                                                  \
            const __m512i w0 = _mm512_loadu_si512(wt + q * 128), w1 = _mm512_loadu_si512(wt + q * 128 + 64);   \
            QC_X##R(QC_S)                                                                                     \
        }                                                                                                     \
        __m512i t[2 * R];                                                                                     \
        QC_X##R(QC_T)                                                                                         \
        finish512(t, R, acc, acc_in, epi);                                                                    \
    }
QC_K512(1) QC_K512(2) QC_K512(3) QC_K512(4) QC_K512(5) QC_K512(6) QC_K512(7) QC_K512(8) QC_K512(9) QC_K512(10)
QC_K512(11) QC_K512(12)
typedef void (*qc_k512)(const uint8_t *, size_t, const int8_t *, int, int32_t *, int, const qc_gemm_epi *);
static const qc_k512 kRows[13] = {0, k512_1, k512_2, k512_3, k512_4, k512_5, k512_6,
                                  k512_7, k512_8, k512_9, k512_10, k512_11, k512_12};

#ifndef QC_VNNI512_ROWS
#define QC_VNNI512_ROWS 6 /* rows per block: 4-8 measured alike (768x3072, M 64 / 256, load 9), 12 no faster */
#endif

void qc_i8_gemm_avx512vnni(const uint8_t *a, size_t as, const int8_t *wt, int nq, int64_t M, int small, int32_t *acc,
                           int acc_in, const qc_gemm_epi *epi) {
    (void)small; /* int32 sums from the start: no int16 limit */
    const int R = QC_VNNI512_ROWS;
    for (int64_t m = 0; m < M; m += R) {
        const int r = (int)(M - m < R ? M - m : R);
        qc_gemm_epi e;
        if (epi) e = (qc_gemm_epi){epi->corr, epi->scale, epi->facc + m * 32, epi->first};
        kRows[r](a + m * as, as, wt, nq, acc + m * 32, acc_in, epi ? &e : NULL);
    }
}
#else
typedef int qc_gemm_int8_avx512_unused;
#endif
