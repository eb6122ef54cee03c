/* Kernel harness: every compiled ISA variant against the scalar reference and against a plain C
 * transcription of the contract (runtime_ops/formats.py). Runs natively and, for NEON, under
 * qemu-aarch64. int8 paths must match scalar bit for bit; fp32 FMA paths within the contract's
 * level-0 tolerance; scalar level 0 must equal the contract transcription exactly. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/qc_kernels.h"

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint32_t rnd(void) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng_state >> 33);
}
static float rndf(void) { return ((float)(rnd() % 20001) - 10000.f) / 5000.f; }

static void put_bits(uint8_t *row, int64_t k, int b, unsigned v) {
    for (int j = 0; j < b; ++j)
        if ((v >> j) & 1) row[(k * b + j) / 8] |= (uint8_t)(1u << ((k * b + j) % 8));
}

static int passed, failed, gemm_cases;
enum { NISA = 6 }; /* avx2, avx512, avx512novbmi, neon, avxvnni, amx */

static void check(const char *what, const float *got, const float *want, const float *bound, int64_t n) {
    int64_t bad = -1;
    for (int64_t i = 0; i < n && bad < 0; ++i) {
        float d = fabsf(got[i] - want[i]);
        if (bound ? !(d <= bound[i]) : memcmp(&got[i], &want[i], 4) != 0) bad = i;
    }
    if (bad < 0) {
        ++passed;
    } else {
        ++failed;
        printf("FAIL %s at %lld: got %.9g want %.9g\n", what, (long long)bad, got[bad], want[bad]);
    }
}

static int int4_symmetric; /* int4 cases: zero points all 8 (symmetric codes) or random */

static void run_case(int kind, int bits, int64_t M, int64_t K, int64_t N, int64_t gs, int n_out) {
    const int code_bits = kind == QC_TERNARY ? 2 : kind == QC_BINARY ? 1 : bits;
    const int64_t planes = kind == QC_BINARY ? bits : 1, rb = (K * code_bits + 7) / 8, G = (K + gs - 1) / gs;
    const int64_t n_scales = kind == QC_CODEBOOK ? (N << bits) : planes * N * G;
    uint8_t *packed = calloc((size_t)(planes * N * rb) + 1, 1);
    float *scales = malloc(sizeof(float) * (size_t)n_scales), *A = malloc(sizeof(float) * (size_t)(M * K + 1));
    float *W = calloc((size_t)(K * N), sizeof(float)), *bias = malloc(sizeof(float) * (size_t)N);
    int64_t oidx[80]; /* n_out <= 80 */
    float *ow = malloc(sizeof(float) * (size_t)(80 * N));
    uint8_t *is_out = calloc((size_t)K, 1);
    for (int j = 0; j < n_out; ++j) { oidx[j] = (int64_t)((j * 7919 + 3) % K); is_out[oidx[j]] = 1; }
    for (int64_t i = 0; i < n_scales; ++i) scales[i] = rndf();
    for (int64_t i = 0; i < M * K; ++i) A[i] = rndf();
    for (int64_t i = 0; i < N; ++i) bias[i] = rndf();
    for (int64_t i = 0; i < n_out * N; ++i) ow[i] = rndf();
    const int64_t zrb = (G + 1) / 2;
    uint8_t *zp = calloc((size_t)(N * zrb) + 1, 1); /* int4: [N][ceil(G/2)] 4-bit zero points */
    for (int64_t n = 0; n < N; ++n)
        for (int64_t g = 0; g < G; ++g) put_bits(zp + n * zrb, g, 4, int4_symmetric ? 8u : rnd() % 16u);
    /* codes and the contract's W (fixed fp32 order) */
    for (int64_t n = 0; n < N; ++n)
        for (int64_t k = 0; k < K; ++k) {
            const int64_t g = k / gs;
            if (kind == QC_TERNARY) {
                static const unsigned enc[3] = {0, 1, 3};
                static const float val[3] = {0.f, 1.f, -1.f};
                unsigned c = rnd() % 3; /* outlier rows: random, must be ignored */
                put_bits(packed + n * rb, k, 2, enc[c]);
                W[k * N + n] = scales[n * G + g] * val[c];
            } else if (kind == QC_BINARY) {
                float v = 0.f;
                for (int64_t i = 0; i < planes; ++i) {
                    unsigned bit = rnd() & 1;
                    put_bits(packed + (i * N + n) * rb, k, 1, bit);
                    v = v + scales[(i * N + n) * G + g] * (bit ? 1.f : -1.f);
                }
                W[k * N + n] = v;
            } else if (kind == QC_INT4) {
                unsigned c = rnd() % 16u;
                put_bits(packed + n * rb, k, 4, c);
                const int z = (zp[n * zrb + g / 2] >> (4 * (g % 2))) & 15;
                W[k * N + n] = scales[n * G + g] * (float)((int)c - z);
            } else {
                unsigned c = rnd() % (1u << bits);
                put_bits(packed + n * rb, k, bits, c);
                W[k * N + n] = scales[(n << bits) + c];
            }
        }
    for (int64_t k = 0; k < K; ++k) /* packed rows of outlier channels are ignored */
        if (is_out[k])
            for (int64_t n = 0; n < N; ++n) W[k * N + n] = 0.f;
    /* the contract transcription: k ascending, outliers, bias; and the level-4 bound, whose
     * weight term reads Wabs = |W| (ternary, codebook) or sum_i |alpha_i| (binary codes) */
    float *ref = calloc((size_t)(M * N) + 1, sizeof(float)), *bound = malloc(sizeof(float) * (size_t)(M * N + 1));
    float *bound4 = malloc(sizeof(float) * (size_t)(M * N + 1));
    for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < N; ++n) {
            float y = 0.f, ab = 0.f, amax = 0.f, asum = 0.f, wsum = 0.f, wmax = 0.f;
            for (int64_t k = 0; k < K; ++k) {
                y = y + A[m * K + k] * W[k * N + n];
                ab += fabsf(A[m * K + k] * W[k * N + n]);
                if (is_out[k]) continue;
                float wa = fabsf(W[k * N + n]);
                if (kind == QC_BINARY) {
                    wa = 0.f;
                    for (int64_t i = 0; i < planes; ++i) wa += fabsf(scales[(i * N + n) * G + k / gs]);
                }
                amax = fabsf(A[m * K + k]) > amax ? fabsf(A[m * K + k]) : amax;
                asum += fabsf(A[m * K + k]);
                wsum += wa;
                wmax = wa > wmax ? wa : wmax;
            }
            for (int j = 0; j < n_out; ++j) {
                y = y + A[m * K + oidx[j]] * ow[j * N + n];
                ab += fabsf(A[m * K + oidx[j]] * ow[j * N + n]);
            }
            ref[m * N + n] = y + bias[n];
            bound[m * N + n] = 1e-4f * ab + 1e-6f;
            /* x 0.999: the float sums above round; the bound must not be looser than the contract's */
            bound4[m * N + n] = bound[m * N + n] + 0.999f * (amax * wsum + wmax * asum) / 64.f;
        }
    qc_matmul_desc d = {kind, K, N, gs, bits, 0, packed, scales, n_out, oidx, ow, bias, kind == QC_INT4 ? zp : NULL};
    char name[160];
    float *y0 = malloc(sizeof(float) * (size_t)(M * N + 1)), *y4 = malloc(sizeof(float) * (size_t)(M * N + 1));
    float *y = malloc(sizeof(float) * (size_t)(M * N + 1));
    /* scalar, level 0: exactly the contract */
    qc_matmul *w = qc_matmul_create(&d, qc_isa_scalar());
    qc_matmul_run(w, A, M, y0, NULL, NULL);
    snprintf(name, sizeof name, "kind%d bits%d M%lld K%lld N%lld gs%lld scalar level0 == contract", kind, bits,
             (long long)M, (long long)K, (long long)N, (long long)gs);
    check(name, y0, ref, NULL, M * N);
    qc_matmul_free(w);
    /* scalar level 4 on each path (the crossover depends on the ISA's int8 kernel): y4l on the
     * lookup-table / codebook / fma path, y4g on the batched one (where it applies) */
    float *y4l = malloc(sizeof(float) * (size_t)(M * N + 1)), *y4g = malloc(sizeof(float) * (size_t)(M * N + 1));
    d.accuracy_level = 4;
    setenv("QCOMPILER_GEMM_MIN_M", "0", 1);
    w = qc_matmul_create(&d, qc_isa_scalar());
    qc_matmul_run(w, A, M, y4l, NULL, NULL);
    qc_matmul_free(w);
    setenv("QCOMPILER_GEMM_MIN_M", "1", 1);
    w = qc_matmul_create(&d, qc_isa_scalar());
    const int scalar_gemm = !strcmp(qc_matmul_path_for(w, M), "gemm_i8");
    qc_matmul_run(w, A, M, y4g, NULL, NULL);
    qc_matmul_free(w);
    unsetenv("QCOMPILER_GEMM_MIN_M");
    const qc_isa *isas[NISA] = {qc_isa_avx2(),      qc_isa_avx512(),  qc_isa_avx512_novbmi(),
                                 qc_isa_neon(),      qc_isa_avxvnni(), qc_isa_amx()};
    for (int i = 0; i < NISA; ++i) {
        if (i == 2 && isas[2] == isas[1]) continue;
        if (!isas[i]) continue;
        d.accuracy_level = 0;
        w = qc_matmul_create(&d, isas[i]);
        qc_matmul_run(w, A, M, y, NULL, NULL);
        snprintf(name, sizeof name, "kind%d bits%d M%lld K%lld N%lld gs%lld %s level0 ~ scalar", kind, bits,
                 (long long)M, (long long)K, (long long)N, (long long)gs, isas[i]->name);
        check(name, y, y0, bound, M * N);
        qc_matmul_free(w);
        d.accuracy_level = 4; /* the default crossover: equal to scalar on the path this ISA takes */
        w = qc_matmul_create(&d, isas[i]);
        qc_matmul_run(w, A, M, y, NULL, NULL);
        const char *path = qc_matmul_path_for(w, M);
        const int on_gemm = !strcmp(path, "gemm_i8");
        snprintf(name, sizeof name, "kind%d bits%d M%lld K%lld N%lld gs%lld %s level4 (%s) == scalar", kind, bits,
                 (long long)M, (long long)K, (long long)N, (long long)gs, isas[i]->name, path);
        if (on_gemm && !scalar_gemm) {
            ++failed;
            printf("FAIL %s: the scalar variant has no batched path here\n", name);
        } else {
            check(name, y, on_gemm ? y4g : y4l, NULL, M * N);
        }
        qc_matmul_free(w);
    }
    /* the batched int8 path (forced from M = 1): scalar within the level-4 bound, every ISA equal */
    setenv("QCOMPILER_GEMM_MIN_M", "1", 1);
    d.accuracy_level = 4;
    w = qc_matmul_create(&d, qc_isa_scalar());
    const char *gpath = qc_matmul_path_for(w, M);
    qc_matmul_run(w, A, M, y4, NULL, NULL);
    qc_matmul_free(w);
    if (!strcmp(gpath, "gemm_i8")) {
        snprintf(name, sizeof name, "kind%d bits%d M%lld K%lld N%lld gs%lld scalar gemm_i8 within level-4 bound", kind,
                 bits, (long long)M, (long long)K, (long long)N, (long long)gs);
        check(name, y4, ref, bound4, M * N);
        for (int i = 0; i < NISA; ++i) {
            if (!isas[i] || (i == 2 && isas[2] == isas[1])) continue;
            w = qc_matmul_create(&d, isas[i]);
            const char *p = qc_matmul_path_for(w, M);
            if (strcmp(p, "gemm_i8")) { /* only an ISA without the batched kernel may decline */
                if (isas[i]->i8_gemm) {
                    ++failed;
                    printf("FAIL kind%d bits%d M%lld K%lld N%lld gs%lld %s declined the batched path\n", kind, bits,
                           (long long)M, (long long)K, (long long)N, (long long)gs, isas[i]->name);
                }
                qc_matmul_free(w);
                continue;
            }
            qc_matmul_run(w, A, M, y, NULL, NULL);
            snprintf(name, sizeof name, "kind%d bits%d M%lld K%lld N%lld gs%lld %s gemm_i8 == scalar", kind, bits,
                     (long long)M, (long long)K, (long long)N, (long long)gs, isas[i]->name);
            check(name, y, y4, NULL, M * N);
            ++gemm_cases;
            qc_matmul_free(w);
        }
    }
    unsetenv("QCOMPILER_GEMM_MIN_M");
    free(packed); free(scales); free(A); free(W); free(bias); free(ow); free(is_out); free(zp);
    free(ref); free(bound); free(bound4); free(y0); free(y4); free(y4l); free(y4g); free(y);
}

static void gather_case(void) {
    /* rows of 2/4/8 bits; decode must equal value * scale exactly */
    const int64_t V = 5, D = 13, gs = 4, G = 4;
    const uint8_t rbits[5] = {2, 4, 8, 4, 2};
    int vals[5][13];
    uint8_t table[64] = {0};
    int64_t off[6] = {0};
    float scales[20];
    for (int i = 0; i < 20; ++i) scales[i] = rndf();
    for (int64_t r = 0; r < V; ++r) {
        const int b = rbits[r];
        for (int64_t dd = 0; dd < D; ++dd) {
            int v = b == 2 ? (int)(rnd() % 3) - 1 : (int)(rnd() % (1u << b)) - (1 << (b - 1));
            vals[r][dd] = v;
            put_bits(table + off[r], dd, b, (unsigned)v & ((1u << b) - 1));
        }
        off[r + 1] = off[r] + (D * b + 7) / 8;
    }
    int64_t idx[4] = {0, 2, 4, -1};
    float out[4 * 13], want[4 * 13];
    const char *err = qc_packed_gather_check(rbits, off, V, off[V], D);
    int64_t bad = qc_packed_gather(table, off, rbits, scales, V, D, gs, idx, NULL, 4, out);
    for (int i = 0; i < 4; ++i) {
        int64_t r = idx[i] < 0 ? idx[i] + V : idx[i];
        for (int64_t dd = 0; dd < D; ++dd) want[i * D + dd] = (float)vals[r][dd] * scales[r * G + dd / gs];
    }
    if (err || bad) { ++failed; printf("FAIL gather check/err\n"); } else check("packed gather", out, want, NULL, 4 * D);
    int64_t oob[1] = {5};
    if (qc_packed_gather(table, off, rbits, scales, V, D, gs, oob, NULL, 1, out) != 1) { ++failed; printf("FAIL gather oob\n"); } else ++passed;
}

int main(void) {
    printf("isa chosen: %s\n", qc_isa_get()->name);
    static const int64_t shapes[][4] = {
        {1, 64, 32, 64}, {3, 70, 45, 16}, {5, 200, 33, 200}, {2, 37, 11, 8}, {4, 256, 64, 32},
        {1, 600, 40, 600}, {6, 96, 70, 48}, {1, 1, 1, 1}, {2, 9, 3, 4},
        {2, 2100, 40, 2100}, /* > 128 lookup steps per group: the int16 sums are flushed mid-group */
        {131, 300, 70, 300}, {13, 520, 33, 128}, {9, 1030, 65, 1030}, /* row tails, 128-row tasks, chunks */
        {20, 200, 40, 64}, /* between the ISAs' crossovers */
        {50, 700, 70, 700}, {96, 4100, 40, 4100}}; /* AMX: 32-, 16- and 2-row blocks, tails of 15 and 1 kernel rows */
    const int ns = (int)(sizeof shapes / sizeof shapes[0]);
    for (int s = 0; s < ns + 2; ++s) {
        if (s >= ns) setenv("QCOMPILER_PREFETCH", "1", 1); /* the prefetching LUT loops, on two shapes */
        const int64_t *sh = shapes[s < ns ? s : s - ns + 1];
        const int64_t M = sh[0], K = sh[1], N = sh[2], gs = sh[3];
        run_case(QC_TERNARY, 2, M, K, N, gs, s % 3 == 1 ? 2 : 0);
        for (int b = 1; b <= 4; ++b) run_case(QC_BINARY, b, M, K, N, gs, s % 3 == 2 ? 2 : 0);
        for (int b = 2; b <= 4; ++b) run_case(QC_CODEBOOK, b, M, K, N, gs, s % 3 == 0 ? 3 : 0);
        int4_symmetric = s % 2;
        run_case(QC_INT4, 4, M, K, N, gs, s % 3 == 1 ? 3 : 0);
    }
    /* many outlier channels (70 of 300) */
    run_case(QC_TERNARY, 2, 3, 300, 40, 300, 70);
    run_case(QC_BINARY, 2, 20, 300, 70, 64, 70);
    run_case(QC_INT4, 4, 3, 300, 40, 32, 70);
    gather_case();
    printf("gemm_i8 ISA comparisons: %d\n", gemm_cases);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
