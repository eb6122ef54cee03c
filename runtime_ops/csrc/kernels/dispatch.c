/* The ISA variant, chosen once at first use from CPUID / hwcaps, or forced by QCOMPILER_ISA. */
#include <stdlib.h>
#include <string.h>

#include "qc_kernels.h"

const qc_isa *qc_isa_by_name(const char *name) {
    if (!name) return NULL;
    if (!strcmp(name, "scalar")) return qc_isa_scalar();
    if (!strcmp(name, "avx2")) return qc_isa_avx2();
    if (!strcmp(name, "avxvnni")) return qc_isa_avxvnni();
    if (!strcmp(name, "avx512")) return qc_isa_avx512();
    if (!strcmp(name, "avx512novbmi")) return qc_isa_avx512_novbmi();
    if (!strcmp(name, "amx")) return qc_isa_amx();
    if (!strcmp(name, "neon")) return qc_isa_neon();
    return NULL;
}

static const qc_isa *detect(void) {
    const char *forced = getenv("QCOMPILER_ISA");
    if (forced && *forced) {
        const qc_isa *isa = qc_isa_by_name(forced);
        return isa ? isa : qc_isa_scalar();
    }
    if (qc_isa_amx()) return qc_isa_amx();
    if (qc_isa_avx512()) return qc_isa_avx512();
    if (qc_isa_avxvnni()) return qc_isa_avxvnni();
    if (qc_isa_avx2()) return qc_isa_avx2();
    if (qc_isa_neon()) return qc_isa_neon();
    return qc_isa_scalar();
}

const qc_isa *qc_isa_get(void) {
    static const qc_isa *chosen;
    const qc_isa *isa = __atomic_load_n(&chosen, __ATOMIC_ACQUIRE);
    if (!isa) {
        isa = detect();
        __atomic_store_n(&chosen, isa, __ATOMIC_RELEASE);
    }
    return isa;
}
