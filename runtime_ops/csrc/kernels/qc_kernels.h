/* qcompiler kernels: plain C on raw pointers (no onnxruntime types).
 * The packed formats are defined in runtime_ops/formats.py; this header is the kernels' view:
 * prepack once (qc_matmul_create), run many times (qc_matmul_run), per-ISA inner loops behind
 * a dispatch table chosen once (qc_isa_get). */
#ifndef QC_KERNELS_H
#define QC_KERNELS_H
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* QC_INT4: blockwise int4, W[k][n] = scales[n][g] * (code - zero_point[n][g]), g = k / group_size,
 * codes and zero points 0..15 in 4-bit bitstream rows [N][ceil(K / 2)] and [N][ceil(G / 2)]
 * (Int4MatMul). */
enum { QC_TERNARY = 0, QC_BINARY = 1, QC_CODEBOOK = 2, QC_INT4 = 3 };
enum { QC_LUT_COLS = 32, QC_FMA_COLS = 16, QC_FMA_KB = 256, QC_CB_KB = 128 };

typedef struct qc_matmul qc_matmul;
/* The end of a scale group in the batched int8 kernels (qc_isa.i8_gemm). */
typedef struct qc_gemm_epi {
    const int32_t *corr; /* [32] */
    const float *scale;  /* [32] */
    float *facc;         /* [M][32] */
    int first;
} qc_gemm_epi;

/* One instruction-set variant: the inner loops. Everything else is common C. */
typedef struct qc_isa {
    const char *name;
    /* LUT GEMV on one block of 32 columns for R rows (R <= 4), one weight plane.
     * nib: [G][steps][32] bytes, byte c = (index of lookup group 2s, column c) | (index of 2s+1) << 4.
     * tables: row r at tables + r*tab_stride, [G*steps*2][16] int8. scales: [G][32] float.
     * acc[r*32 + c] = acc + (float)isum_g * scales[g][c] for g ascending (mul, then add). */
    void (*lut_block)(const uint8_t *nib, const int8_t *tables, size_t tab_stride, const float *scales,
                      int G, int steps, int R, float *acc);
    /* Ternary LUT GEMV on one block of 32 columns, the two sign planes of a code paired in one
     * lookup (w = (a + b) / 2 with a, b in {-1, +1}): step s covers 4 elements and one table.
     * nib: [G][steps][32] bytes; column c reads bytes 2*(c%16) (plane a) and 2*(c%16)+1 (plane b),
     * low nibbles for c < 16, high nibbles for c >= 16. tables: [G*steps][16] int8 signed 4-sums.
     * acc[r*32 + c] = acc + (float)isum_g * scales[g][c], isum = sum_s T[a] + T[b]. */
    void (*lut_pair_block)(const uint8_t *nib, const int8_t *tables, size_t tab_stride, const float *scales,
                           int G, int steps, int R, float *acc);
    /* Y[m*ldy + c] += sum_k A[m*lda + k] * panel[k*16 + c], k ascending, c < nc (<= 16). */
    void (*fma_panel)(int M, const float *A, size_t lda, const float *panel, int kb, float *Y, size_t ldy, int nc);
    /* Codebook int8 dots of NC (<= 8) columns and R (<= 4) rows:
     * out[r*8 + c] = sum_k cb[c][idx_c(k)] * a[r*a_stride + k], k < kp (a multiple of QC_CB_KB).
     * Columns interleaved by 8: chunk t of column c at nib + (8t + c) * 64, byte j of it =
     * idx(128t + j) | idx(128t + 64 + j) << 4 (one sequential stream for 8 columns);
     * centroids cb + 16c; wsum[c] = sum_k cb[c][idx_c(k)] over all kp (for kernels that offset
     * activations to unsigned), asum[r] = sum_k a[r*a_stride + k] (for kernels that offset the
     * centroids). */
    void (*cb_dot)(const uint8_t *nib, const int8_t *cb, const int32_t *wsum, const int32_t *asum, int NC, const int8_t *a,
                   size_t a_stride, int kp, int R, int32_t *out);
    /* Q int8 tables of 16 signed 4-sums from av[Q*4]: with s_j = (bit j of i ? x_j : -x_j),
     * v = (s_0 + s_1) + (s_2 + s_3), T[q][i] = clamp(lrintf(v * inv), -127, 127). */
    void (*lut_tables)(const float *av, int64_t Q, float inv, int8_t *T);
    /* accuracy_level 0 for ternary / binary codes on one block of 32 columns: fp32 tables of the 8
     * signed 3-sums of activations (tables: [G*steps][8]), one byte (3-bit index) per column and
     * plane per 3-element step (idx: [G][steps][32 * planes], plane a then plane b when paired).
     * acc[r*32 + c] += gsum_g[c] * scales[g][c], gsum = sum_s T[a] (+ T[b] when paired).
     * NULL when the ISA has none (the fma path serves level 0). */
    void (*flut_block)(const uint8_t *idx, const float *tables, size_t tab_stride, const float *scales, int G,
                       int steps, int paired, int R, float *acc);
    /* accuracy_level 0 codebook dots in fp32, layout as cb_dot: out[r*8 + c] = sum_k cb[c][idx_c(k)] *
     * a[r*a_stride + k] with fp32 centroids cb (16 per column) and fp32 activations zero-padded to
     * kp. NULL when the ISA has none (the fma path serves level 0). */
    void (*cbf_dot)(const uint8_t *nib, const float *cb, int NC, const float *a, size_t a_stride, int kp, int R,
                    float *out);
    /* lut_block / lut_pair_block with software prefetch of the index stream, for matrices too large
     * to stay in cache (a few % slower on cache-resident indices, faster from memory). NULL: none. */
    void (*lut_block_pf)(const uint8_t *nib, const int8_t *tables, size_t tab_stride, const float *scales,
                         int G, int steps, int R, float *acc);
    void (*lut_pair_block_pf)(const uint8_t *nib, const int8_t *tables, size_t tab_stride, const float *scales,
                              int G, int steps, int R, float *acc);
    /* 0: lut_block reads nib as above. 1: paired layout, like the ternary one: column c reads byte
     * 2*(c%16) (lookup group 2s) and 2*(c%16)+1 (group 2s+1), low nibbles for c < 16, high for c >= 16. */
    int lut_binary_pair;
    /* Batched int8 GEMM (gemm_int8.c) on one block of 32 decoded columns and M rows:
     * s[m][c] = (acc_in ? acc[m*32 + c] : 0) + sum_{q < nq} sum_{j < 4} act(a[m*a_stride + 4q + j]) * wt[q*128 + 4c + j]
     * (wt 32-byte aligned), act(x) = x read as uint8 when i8_act_offset (activations stored + 128;
     * epi->corr then holds 128 x the weight sums) and as int8 otherwise. small: |wt| * nq <= 64
     * (|wt| <= 1 and nq <= 64, or symmetric int4's |wt| <= 8 and nq <= 8: int16 partial sums of the unsigned
     * activations cannot overflow); otherwise |wt| <= 64 (no maddubs saturation).
     * epi NULL: acc[m*32 + c] = s. Otherwise the group's end: x = (float)(s - corr[c]) * scale[c],
     * facc[m*32 + c] = first ? x : facc[m*32 + c] + x (mul, then add). NULL: no batched path. */
    void (*i8_gemm)(const uint8_t *a, size_t a_stride, const int8_t *wt, int nq, int64_t M, int small, int32_t *acc,
                    int acc_in, const struct qc_gemm_epi *epi);
    int i8_act_offset;
    /* Optional faster decoder of kernel rows [q0, q0 + nq) of scale group g of column block cb to
     * wt (layout as above, the values gemm_int8.c's portable decoder gives); returns how many
     * leading rows it decoded (the portable decoder does the rest). NULL: none. */
    int (*i8_decode)(const qc_matmul *w, int64_t cb, int64_t g, int64_t q0, int nq, int8_t *wt);
    /* Int4MatMul on the batched path below a crossover M (gemm_int8.c), one block of 32 columns,
     * straight from its packed records (rec: [G][Lq][64], prepack_int4's layout): facc[m*32 + c] = the batched path's group
     * sums for m < M, bit for bit, from signed int8 activations a (row m at a + m*a_stride, group g
     * at + 4 Lq g) and their per-(row, group) scales as and sums asum ([m*s_stride + g]); scale and
     * zp: the block's [G][32]. NULL: none (the tile path serves every M). */
    void (*i4_direct)(const uint8_t *rec, int64_t G, int64_t Lq, const int8_t *a, size_t a_stride, const float *as,
                    const int32_t *asum, size_t s_stride, const float *scale, const uint8_t *zp, int64_t M,
                    float *facc);
} qc_isa;

/* A LUT block entry point (the lut_block / lut_pair_block signature) calling `rows`, an always-inline
 * loop over R rows, with R a compile-time constant (1..4) and `rows`' trailing arguments fixed
 * (e.g. prefetch on/off): the compiler then unrolls the row loop of each case. `attrs` is the
 * entry point's target attribute (empty when the whole file is built for the ISA). */
#define QC_LUT_ENTRY(attrs, name, rows, ...)                                                              \
    attrs static void name(const uint8_t *nib, const int8_t *tables, size_t tab_stride, const float *scales, \
                           int G, int S, int R, float *acc) {                                              \
        switch (R) {                                                                                       \
        case 1: rows(nib, tables, tab_stride, scales, G, S, 1, acc, __VA_ARGS__); break;                   \
        case 2: rows(nib, tables, tab_stride, scales, G, S, 2, acc, __VA_ARGS__); break;                   \
        case 3: rows(nib, tables, tab_stride, scales, G, S, 3, acc, __VA_ARGS__); break;                   \
        default: rows(nib, tables, tab_stride, scales, G, S, 4, acc, __VA_ARGS__); break;                  \
        }                                                                                                  \
    }

const qc_isa *qc_isa_scalar(void);
const qc_isa *qc_isa_avx2(void);   /* NULL when not compiled in or not supported by the CPU */
const qc_isa *qc_isa_avxvnni(void); /* AVX2 + the AVX-VNNI batched int8 kernel (no AVX-512 needed) */
const qc_isa *qc_isa_avx512(void); /* AVX-512 BW+VL+VNNI (+VBMI when present): see matmul_avx512.c */
const qc_isa *qc_isa_avx512_novbmi(void); /* the same without the VBMI loops (tests; "avx512novbmi") */
const qc_isa *qc_isa_amx(void);    /* avx512 + the AMX-INT8 batched int8 kernel (NULL without AMX or Linux's grant) */
const qc_isa *qc_isa_neon(void);   /* NULL when not compiled in */
/* Chosen once: QCOMPILER_ISA=scalar|avx2|avxvnni|avx512|avx512novbmi|amx|neon forces (an unavailable one falls back to scalar). */
const qc_isa *qc_isa_get(void);
const qc_isa *qc_isa_by_name(const char *name);

/* Parallel-for callback supplied by the host (onnxruntime's thread pool), or NULL for serial. */
typedef void (*qc_task_fn)(void *ctx, size_t i);
typedef void (*qc_parallel_fn)(void *host, qc_task_fn fn, void *ctx, size_t total);

typedef struct qc_matmul_desc {
    int kind;            /* QC_TERNARY / QC_BINARY / QC_CODEBOOK / QC_INT4 */
    int64_t K, N, group_size;
    int bits;            /* planes (binary) or index bits (codebook); 2 for ternary, 4 for int4 */
    int accuracy_level;  /* 0 or 4 */
    const uint8_t *packed;       /* the contract's packed bytes */
    const float *scales;         /* fp32 copy of scales / alphas / codebook */
    int64_t n_out;
    const int64_t *outlier_idx;  /* [n_out], validated 0 <= idx < K */
    const float *outlier_w;      /* [n_out][N] fp32 */
    const float *bias;           /* [N] or NULL */
    const uint8_t *zero_points;  /* int4: [N][ceil(G/2)] 4-bit zero points (bitstream rule); NULL: 8 */
} qc_matmul_desc;

/* Copies what it needs. NULL on allocation failure. */
qc_matmul *qc_matmul_create(const qc_matmul_desc *d, const qc_isa *isa);
void qc_matmul_free(qc_matmul *w);
/* Y [M][N] from A [M][K]. Returns 0, or -1 on allocation failure. */
int qc_matmul_run(const qc_matmul *w, const float *A, int64_t M, float *Y, qc_parallel_fn par, void *host);
/* Which path a run of one row takes ("lut", "fma", "cb_i8", ...) for tests and benchmarks. */
const char *qc_matmul_path(const qc_matmul *w);
/* The path a run of M rows takes: "gemm_i8" (the batched int8 path) from M >= the crossover
 * (QCOMPILER_GEMM_MIN_M overrides it when the weights are prepacked; 0 disables the path). */
const char *qc_matmul_path_for(const qc_matmul *w, int64_t M);

/* PackedGather: out [n_idx][D]. row_offsets/row_bits must be validated by the caller
 * (qc_packed_gather_check). Returns 0, or the position+1 of the first out-of-range index. */
const char *qc_packed_gather_check(const uint8_t *row_bits, const int64_t *row_offsets, int64_t V,
                                   int64_t total_bytes, int64_t D);
int64_t qc_packed_gather(const uint8_t *table, const int64_t *row_offsets, const uint8_t *row_bits,
                         const float *scales, int64_t V, int64_t D, int64_t group_size,
                         const int64_t *idx64, const int32_t *idx32, int64_t n_idx, float *out);

#ifdef __cplusplus
}
#endif
#endif
