/* Kernel micro-benchmark (no onnxruntime): median us of qc_matmul_run per kind, ISA and shape.
 * `qc_kernel_bench [K N M isa evict_kb runs kind gs]` (thread CPU time); evict_kb > 0 writes that many KB between runs (weights
 * then come from L3 or memory, as in runtime_ops.bench's interleaved "warm" columns). For development only:
 * performance claims come from runtime_ops.bench through session.run. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../kernels/qc_kernels.h"

/* thread CPU time: the machine is shared, and CPU time survives preemption by other jobs */
static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec * 1e6 + t.tv_nsec * 1e-3;
}
static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}
static uint32_t s = 12345;
static uint32_t rnd(void) { s = s * 1103515245u + 12345u; return s >> 8; }

int main(int argc, char **argv) {
    int64_t K = argc > 1 ? atoll(argv[1]) : 768, N = argc > 2 ? atoll(argv[2]) : 3072, M = argc > 3 ? atoll(argv[3]) : 1;
    const qc_isa *isa = argc > 4 ? qc_isa_by_name(argv[4]) : qc_isa_get();
    size_t evict = (size_t)(argc > 5 ? atoll(argv[5]) : 8192) << 10;
    int runs = argc > 6 ? atoi(argv[6]) : 400;
    char *ev = evict ? malloc(evict) : NULL;
    if (ev) memset(ev, 1, evict);
    volatile uint64_t sink = 0;
    float *A = malloc(sizeof(float) * (size_t)(M * K)), *Y = malloc(sizeof(float) * (size_t)(M * N));
    for (int64_t i = 0; i < M * K; ++i) A[i] = (float)((int)(rnd() % 2001) - 1000) / 500.f;
    float bias[1 << 14] = {0};
    int64_t oidx[2] = {3, K / 2};
    float *ow = malloc(sizeof(float) * 2 * (size_t)N);
    for (int64_t i = 0; i < 2 * N; ++i) ow[i] = 0.01f * (float)(i % 7);
    const char *names[4] = {"ternary", "bcq2", "cb4", "int4"};
    printf("isa %s K %lld N %lld M %lld evict %zu KB\n", isa->name, (long long)K, (long long)N, (long long)M, evict >> 10);
    const int only = argc > 7 ? atoi(argv[7]) : -1;
    for (int kind = 0; kind < 4; ++kind) {
        if (only >= 0 && kind != only) continue;
        const int bits = kind == QC_TERNARY ? 2 : kind == QC_BINARY ? 2 : 4; /* int4: 4-bit codes */
        const int64_t planes = kind == QC_BINARY ? 2 : 1, cbits = kind == QC_BINARY ? 1 : bits;
        const int64_t rb = (K * cbits + 7) / 8;
        uint8_t *packed = malloc((size_t)(planes * N * rb));
        for (int64_t i = 0; i < planes * N * rb; ++i) {
            uint8_t b = (uint8_t)rnd();
            if (kind == QC_TERNARY) { /* no 0b10 codes */
                uint8_t o = 0;
                for (int j = 0; j < 4; ++j) { unsigned c = (b >> (2 * j)) & 3u; o |= (uint8_t)((c == 2 ? 0 : c) << (2 * j)); }
                b = o;
            }
            packed[i] = b;
        }
        const int64_t ns = kind == QC_CODEBOOK ? N * 16 : planes * N * (argc > 8 ? (K + atoll(argv[8]) - 1) / atoll(argv[8]) : 1);
        float *sc = malloc(sizeof(float) * (size_t)ns);
        for (int64_t i = 0; i < ns; ++i) sc[i] = (float)((int)(rnd() % 2001) - 1000) / 20000.f;
        const int64_t gs = argc > 8 && kind != QC_CODEBOOK ? atoll(argv[8]) : K, G = (K + gs - 1) / gs;
        uint8_t *zp = malloc((size_t)(N * ((G + 1) / 2)) + 1); /* int4: random zero points, as the int4 scheme's */
        for (int64_t i = 0; i < N * ((G + 1) / 2); ++i) zp[i] = (uint8_t)rnd();
        qc_matmul_desc d = {kind, K, N, gs, bits, 4, packed, sc, 2, oidx, ow, N <= (1 << 14) ? bias : NULL, zp};
        qc_matmul *w = qc_matmul_create(&d, isa);
        double *t = malloc(sizeof(double) * (size_t)runs);
        for (int r = 0; r < runs + 10; ++r) {
            if (ev) { /* read (not write: no write-back traffic during the run) */
                uint64_t acc = 0;
                for (size_t i = 0; i < evict; i += 64) acc += *(const uint64_t *)(ev + i);
                sink += acc;
            }
            double t0 = now_us();
            qc_matmul_run(w, A, M, Y, NULL, NULL);
            if (r >= 10) t[r - 10] = now_us() - t0;
        }
        qsort(t, (size_t)runs, sizeof(double), cmp);
        printf("%-8s %-7s median %8.2f us  p10 %8.2f  (gs %lld)\n", names[kind], qc_matmul_path_for(w, M), t[runs / 2],
               t[runs / 10], (long long)(G ? (K + G - 1) / G : K));
        qc_matmul_free(w); free(packed); free(sc); free(t); free(zp);
    }
    return 0;
}
