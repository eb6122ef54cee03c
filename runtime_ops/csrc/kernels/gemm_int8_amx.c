/* AMX-INT8 kernel of the batched int8 path (gemm_int8.c) and the `amx` ISA variant: the `avx512`
 * variant with this kernel, chosen first on CPUs with AMX-TILE + AMX-INT8 once Linux grants the
 * tile data state (arch_prctl ARCH_REQ_XCOMP_PERM); without that permission the variant does not
 * exist and dispatch falls back to `avx512`.
 *
 * The decoded tile wt[q][c][4] is already AMX's B layout: 16 kernel rows of one 16-column half are
 * a 16 x 64-byte tile (stride 128). Blocks of 32 rows x 32 columns keep 4 accumulator tiles, 2 A
 * and 2 B tiles (each loaded tile feeds two tdpbusd). Same operands as the AVX-512 VNNI kernel
 * (activations unsigned, stored + 128; weights signed; epi->corr removes the offset): tdpbusd sums
 * u8 x s8 products in int32 without saturation, so the int32 sums and the float epilogue (convert,
 * mul, then add, as finish512) equal the portable kernel's bit for bit. A tail of fewer than 16
 * kernel rows is copied zero-padded (zero weights cancel whatever activations meet them); fewer
 * than 16 remaining rows run on the AVX-512 VNNI kernel. */
#define _GNU_SOURCE /* syscall() under -std=c11 */
#include "qc_internal.h"

#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__)
#include <cpuid.h>
#include <immintrin.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define AMX_TARGET __attribute__((target("amx-tile,amx-int8,avx512f,avx512bw,avx512vl")))

typedef struct amx_cfg {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_cfg;

/* tiles 0-3: accumulators (row block r, half h at 2r + h); 4, 5: activations; 6, 7: weights */
static const amx_cfg kCfg = {1, 0, {0}, {64, 64, 64, 64, 64, 64, 64, 64}, {16, 16, 16, 16, 16, 16, 16, 16}};

/* The group's end for one 16 x 16 accumulator block s (rows r0.., columns c0..), as finish512. */
AMX_TARGET static void amx_epilogue(const int32_t *s, int r0, int c0, const qc_gemm_epi *epi) {
    const __m512i corr = _mm512_loadu_si512(epi->corr + c0);
    const __m512 scale = _mm512_loadu_ps(epi->scale + c0);
    for (int r = 0; r < 16; ++r) {
        const __m512i v = _mm512_sub_epi32(_mm512_loadu_si512(s + 16 * r), corr);
        const __m512 x = _mm512_mul_ps(_mm512_cvtepi32_ps(v), scale);
        float *f = epi->facc + (r0 + r) * 32 + c0;
        _mm512_storeu_ps(f, epi->first ? x : _mm512_add_ps(_mm512_loadu_ps(f), x));
    }
}

/* Accumulator tile t (row block r of this call, half h) to acc or through the epilogue. */
#define AMX_OUT(t, r, h)                                                                                    \
    do {                                                                                                    \
        if (!epi) {                                                                                         \
            _tile_stored(t, acc + (m + 16 * (r)) * 32 + 16 * (h), 128);                                     \
        } else {                                                                                            \
            _tile_stored(t, sbuf, 64);                                                                      \
            amx_epilogue(sbuf, (int)m + 16 * (r), 16 * (h), epi);                                           \
        }                                                                                                   \
    } while (0)
#define AMX_IN(t, r, h)                                                                                     \
    do {                                                                                                    \
        if (acc_in) _tile_loadd(t, acc + (m + 16 * (r)) * 32 + 16 * (h), 128);                              \
        else _tile_zero(t);                                                                                 \
    } while (0)

AMX_TARGET void qc_i8_gemm_amx(const uint8_t *a, size_t as, const int8_t *wt, int nq, int64_t M, int small,
                               int32_t *acc, int acc_in, const qc_gemm_epi *epi) {
    const int full = nq / 16, rem = nq % 16;
    const int64_t M32 = M / 32 * 32, M16 = M / 16 * 16;
    int32_t sbuf[256] __attribute__((aligned(64)));
    int8_t btail[16 * 128] __attribute__((aligned(64)));
    uint8_t atail[32 * 64] __attribute__((aligned(64)));
    if (rem) { /* the last kernel rows, zero-padded to 16 */
        memset(btail, 0, sizeof btail);
        memcpy(btail, wt + (size_t)full * 16 * 128, (size_t)rem * 128);
    }
    if (M16 > 0) _tile_loadconfig(&kCfg);
    int64_t m = 0;
    for (; m < M32; m += 32) {
        AMX_IN(0, 0, 0); AMX_IN(1, 0, 1); AMX_IN(2, 1, 0); AMX_IN(3, 1, 1);
        const uint8_t *a0 = a + (size_t)m * as;
        for (int kt = 0; kt < full; ++kt) {
            _tile_loadd(4, a0 + 64 * kt, (long)as);
            _tile_loadd(5, a0 + 16 * as + 64 * kt, (long)as);
            _tile_loadd(6, wt + (size_t)kt * 16 * 128, 128);
            _tile_loadd(7, wt + (size_t)kt * 16 * 128 + 64, 128);
            _tile_dpbusd(0, 4, 6); _tile_dpbusd(1, 4, 7); _tile_dpbusd(2, 5, 6); _tile_dpbusd(3, 5, 7);
        }
        if (rem) {
            memset(atail, 0, sizeof atail);
            for (int r = 0; r < 32; ++r) memcpy(atail + 64 * r, a0 + (size_t)r * as + 64 * full, (size_t)rem * 4);
            _tile_loadd(4, atail, 64);
            _tile_loadd(5, atail + 16 * 64, 64);
            _tile_loadd(6, btail, 128);
            _tile_loadd(7, btail + 64, 128);
            _tile_dpbusd(0, 4, 6); _tile_dpbusd(1, 4, 7); _tile_dpbusd(2, 5, 6); _tile_dpbusd(3, 5, 7);
        }
        AMX_OUT(0, 0, 0); AMX_OUT(1, 0, 1); AMX_OUT(2, 1, 0); AMX_OUT(3, 1, 1);
    }
    for (; m < M16; m += 16) {
        AMX_IN(0, 0, 0); AMX_IN(1, 0, 1);
        const uint8_t *a0 = a + (size_t)m * as;
        for (int kt = 0; kt < full; ++kt) {
            _tile_loadd(4, a0 + 64 * kt, (long)as);
            _tile_loadd(6, wt + (size_t)kt * 16 * 128, 128);
            _tile_loadd(7, wt + (size_t)kt * 16 * 128 + 64, 128);
            _tile_dpbusd(0, 4, 6); _tile_dpbusd(1, 4, 7);
        }
        if (rem) {
            memset(atail, 0, 16 * 64);
            for (int r = 0; r < 16; ++r) memcpy(atail + 64 * r, a0 + (size_t)r * as + 64 * full, (size_t)rem * 4);
            _tile_loadd(4, atail, 64);
            _tile_loadd(6, btail, 128);
            _tile_loadd(7, btail + 64, 128);
            _tile_dpbusd(0, 4, 6); _tile_dpbusd(1, 4, 7);
        }
        AMX_OUT(0, 0, 0); AMX_OUT(1, 0, 1);
    }
    if (M16 > 0) _tile_release();
    if (m < M) {
        qc_gemm_epi e;
        if (epi) e = (qc_gemm_epi){epi->corr, epi->scale, epi->facc + m * 32, epi->first};
        qc_i8_gemm_avx512vnni(a + (size_t)m * as, as, wt, nq, M - m, small, acc + m * 32, acc_in, epi ? &e : NULL);
    }
}

/* Linux keeps AMX's tile data off until the process asks for it (once; the grant is per process). */
static int amx_permitted(void) {
    static int state; /* 0 unknown, 1 granted, -1 refused */
    int s = __atomic_load_n(&state, __ATOMIC_ACQUIRE);
    if (!s) {
        enum { ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18 };
        s = syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 ? 1 : -1;
        __atomic_store_n(&state, s, __ATOMIC_RELEASE);
    }
    return s > 0;
}

/* CPUID leaf 7: EDX bit 24 AMX-TILE, bit 25 AMX-INT8 (read directly: clang before 17 has no
 * "amx-tile" for __builtin_cpu_supports, which broke the fuzz build) */
static int cpu_has_amx_int8(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    return (d >> 24 & 1u) && (d >> 25 & 1u);
}

const qc_isa *qc_isa_amx(void) {
    static qc_isa v;
    const qc_isa *base = qc_isa_avx512();
    if (!base || !cpu_has_amx_int8() || !amx_permitted())
        return 0;
    if (!__atomic_load_n(&v.name, __ATOMIC_ACQUIRE)) {
        qc_isa t = *base;
        t.i8_gemm = qc_i8_gemm_amx;
        t.name = 0;
        v = t;
        __atomic_store_n(&v.name, "amx", __ATOMIC_RELEASE);
    }
    return &v;
}
#else
const qc_isa *qc_isa_amx(void) { return 0; }
#endif
