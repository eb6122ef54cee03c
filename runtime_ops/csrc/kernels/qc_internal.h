/* The kernels' private view of a prepacked weight (qc_matmul), shared by qc_core.c (prepacking,
 * the lookup-table and codebook drivers) and gemm_int8.c (the batched int8 path). Not installed:
 * the glue sees only qc_kernels.h. */
#ifndef QC_INTERNAL_H
#define QC_INTERNAL_H
#include "qc_kernels.h"

enum { PATH_FMA = 0, PATH_LUT = 1, PATH_CB = 2, PATH_FLUT = 3, PATH_CBF = 4 };

struct qc_matmul {
    int kind, bits, level, path;
    int64_t K, N, gs, G, row_bytes, n_planes;
    const qc_isa *isa;
    uint8_t *packed;   /* copy of the contract bytes (fma path only; freed after prepacking) */
    float *scales;     /* fp32 scales / alphas / codebook */
    int64_t n_out;
    int64_t *oidx;
    float *ow, *bias;
    uint8_t *is_outlier; /* [K] */
    /* table paths (lut: int8 tables of 4-element sums; lut_f32: fp32 tables of 3-element sums) */
    int epg, steps;                /* elements per table, lookup steps per group */
    int64_t glen, gsp, Kv, Q, ncb; /* group length, padded length, K padded, tables per row, blocks */
    uint8_t *nib;                  /* prepacked indices */
    int prefetch;                  /* large: the LUT loops prefetch the index stream */
    float *lscales;                /* [block][plane][group][32] scales (x 0.5 for paired planes) */
    /* codebook paths (cb_i8, cb_f32) */
    int64_t kp;
    uint8_t *cbnib;
    int8_t *cbq;
    int32_t *cbsum;
    float *cbs;
    /* batched int8 path (gemm_int8.c), taken when M >= gemm_min_m (0: never) */
    int64_t gemm_min_m;
    int gemm_small;    /* decoded |w| <= 1 (ternary, 1-bit codes): the kernels may sum in int16 */
    int64_t gemm_lq;   /* kernel rows (4 elements each) per scale group of the padded layout */
    int64_t gemm_ncb;  /* blocks of 32 columns */
    int64_t gemm_G;    /* scale groups seen by the epilogue (1 for codebooks) */
    float *gscale;     /* [block][group][32] scale of the decoded int8 weights (NULL: from lscales) */
    int32_t *gwsum;    /* [block][group][32] sum of the decoded weights (for kernels offsetting activations) */
    int8_t *gvt;       /* binary codes >= 2 planes: [N][G][16]; codebook: [N][16]: int8 value of each code */
    uint8_t *i4;       /* int4: [block][group][kernel row][64] codes in the decoded tile's order (see prepack_int4) */
    uint8_t *zp;       /* int4: [N][G] zero points */
    uint8_t *i4zp;     /* int4: [block][group][32] zero points of the block's columns (8 past N) */
    int i4_max;        /* int4: the largest |code - 8| of the batched path's weights */
    int64_t i4_direct_max_m; /* int4: rows below which qc_isa.i4_direct runs instead of the tile path (0: never) */
};

/* 8 floats, unaligned (GCC lets a vector alias its element type): element-wise operations round as
 * the scalar ones do. */
typedef float qc_v8f __attribute__((vector_size(32), aligned(4)));

/* One row of one block of columns [n0, n0 + nc): y = acc * ts, then the outliers, then the bias
 * (the reference's order), while the block is in cache. nc is a constant 32 for full blocks, so
 * the loops vectorize. */
static inline __attribute__((always_inline)) void qc_finish_block(const qc_matmul *w, const float *a,
                                                                   const float *acc, float ts, float *y,
                                                                   int64_t n0, const int nc) {
    /* 8 columns at a time, so the partial results stay in one register across the outlier loop */
    const int64_t n_out = w->n_out, N = w->N;
    const int64_t *oidx = w->oidx;
    const float *ow = w->ow + n0, *bias = w->bias ? w->bias + n0 : NULL;
    for (int c0 = 0; c0 < nc; c0 += 8) {
        float v[8];
        if (nc - c0 >= 8) { /* vector types: GCC's own vectorization of the scalar loop gathered acc lane by lane */
            qc_v8f x = *(const qc_v8f *)(acc + c0) * ts;
            for (int64_t j = 0; j < n_out; ++j) x = x + a[oidx[j]] * *(const qc_v8f *)(ow + j * N + c0);
            if (bias) x = x + *(const qc_v8f *)(bias + c0);
            *(qc_v8f *)(y + n0 + c0) = x;
        } else {
            const int e = nc - c0;
            for (int c = 0; c < e; ++c) v[c] = acc[c0 + c] * ts;
            for (int64_t j = 0; j < w->n_out; ++j) {
                const float av = a[w->oidx[j]];
                const float *o = w->ow + j * w->N + n0 + c0;
                for (int c = 0; c < e; ++c) v[c] = v[c] + av * o[c];
            }
            if (w->bias)
                for (int c = 0; c < e; ++c) v[c] = v[c] + w->bias[n0 + c0 + c];
            for (int c = 0; c < e; ++c) y[n0 + c0 + c] = v[c];
        }
    }
}

/* gemm_int8.c: 0 on success or when the path does not apply (w->gemm_min_m stays 0), -1 on
 * allocation failure. Called by qc_matmul_create after the lookup-table / codebook prepacking. */
int qc_gemm_prepare(qc_matmul *w);
/* Y [M][N] through the batched path; 0, or -1 on allocation failure. */
int qc_gemm_run(const qc_matmul *w, const float *A, int64_t M, float *Y, qc_parallel_fn par, void *host);
void qc_gemm_free(qc_matmul *w);

typedef void (*qc_i8_gemm_fn)(const uint8_t *a, size_t a_stride, const int8_t *wt, int nq, int64_t M, int small,
                              int32_t *acc, int acc_in, const qc_gemm_epi *epi);
/* The portable int8 kernel (the reference of qc_isa.i8_gemm, true signed dot products). */
void qc_i8_gemm_scalar(const uint8_t *a, size_t a_stride, const int8_t *wt, int nq, int64_t M, int small,
                       int32_t *acc, int acc_in, const qc_gemm_epi *epi);
/* gemm_int8_avx2.c (x86-64), gemm_int8_neon.c (aarch64, sdot; NULL-returning chooser when the CPU
 * lacks the dot-product extension) */
void qc_i8_gemm_avx2(const uint8_t *a, size_t a_stride, const int8_t *wt, int nq, int64_t M, int small, int32_t *acc,
                     int acc_in, const qc_gemm_epi *epi);
/* AVX-VNNI (gemm_int8_avx2.c, VEX 256-bit) and AVX-512 VNNI (gemm_int8_avx512.c) kernels: same
 * operands as qc_i8_gemm_avx2 (i8_act_offset 1), same bits. */
void qc_i8_gemm_avxvnni(const uint8_t *a, size_t a_stride, const int8_t *wt, int nq, int64_t M, int small,
                        int32_t *acc, int acc_in, const qc_gemm_epi *epi);
void qc_i8_gemm_avx512vnni(const uint8_t *a, size_t a_stride, const int8_t *wt, int nq, int64_t M, int small,
                           int32_t *acc, int acc_in, const qc_gemm_epi *epi);
/* AMX-INT8 tiles (gemm_int8_amx.c): same operands and bits as qc_i8_gemm_avx512vnni, which it
 * calls for the last rows (fewer than 16). */
void qc_i8_gemm_amx(const uint8_t *a, size_t a_stride, const int8_t *wt, int nq, int64_t M, int small, int32_t *acc,
                    int acc_in, const qc_gemm_epi *epi);
void qc_i4_direct_avx2(const uint8_t *rec, int64_t G, int64_t Lq, const int8_t *a, size_t a_stride, const float *as,
                     const int32_t *asum, size_t s_stride, const float *scale, const uint8_t *zp, int64_t M,
                     float *facc);
void qc_i4_direct_avx512vnni(const uint8_t *rec, int64_t G, int64_t Lq, const int8_t *a, size_t a_stride,
                           const float *as, const int32_t *asum, size_t s_stride, const float *scale, const uint8_t *zp,
                           int64_t M, float *facc);
int qc_i8_decode_avx2(const qc_matmul *w, int64_t cb, int64_t g, int64_t q0, int nq, int8_t *wt);
/* decode_binary_avx512.c: binary codes with AVX-512 VBMI (paired layout), the rest by qc_i8_decode_avx2 */
int qc_i8_decode_avx512vbmi(const qc_matmul *w, int64_t cb, int64_t g, int64_t q0, int nq, int8_t *wt);
void qc_i8_gemm_neon_dot(const uint8_t *a, size_t a_stride, const int8_t *wt, int nq, int64_t M, int small,
                         int32_t *acc, int acc_in, const qc_gemm_epi *epi);
int qc_neon_has_dotprod(void);
#endif
