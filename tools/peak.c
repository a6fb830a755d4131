/* One core's multiply-accumulate peak for one precision: independent chains of the widest instruction for it,
 * enough of them to hide the instruction's latency. tools/bench_peers.py compiles this once and runs one copy per
 * core at the same time; a model's GMAC/s over the sum is the share of the machine's peak for its precision.
 *
 *   peak MODE SECONDS   -> prints MACs per second
 *
 * MODE            instruction                                  MACs per instruction
 * fp32-avx2       vfmadd231ps ymm                              8
 * fp32-avx512     vfmadd231ps zmm                              16
 * int8-vnni       vpdpbusd zmm (u8 x s8 -> s32)                64
 * bf16-avx512     vdpbf16ps zmm (bf16 pairs -> fp32)           32
 * int8-amx        tdpbssd, 16x64 by 64x16 int8 tiles           16384
 * bf16-amx        tdpbf16ps, 16x32 by 32x16 bf16 tiles         8192
 *
 * Each kernel is compiled for its own instruction set (function target attributes), so the binary builds and
 * runs its other modes on a CPU without AVX-512 or AMX; the caller only asks for modes the CPU flags offer. */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define INNER 100000

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* The checksum goes to stderr so the compiler cannot drop the loops. */
static void sink(const void *p, size_t n) {
    unsigned s = 0;
    for (size_t i = 0; i < n; i++) s += ((const unsigned char *)p)[i];
    fprintf(stderr, "%u\n", s);
}

/* Each chain starts from its own value: chains that all started at zero computed the same thing, and the compiler
 * merged the twelve into one (one FMA per loop, latency-bound, counted as twelve: the rate was wrong). */
#define CHAINS(OP) OP(0) OP(1) OP(2) OP(3) OP(4) OP(5) OP(6) OP(7) OP(8) OP(9) OP(10) OP(11)

__attribute__((target("avx2,fma"))) static double fp32_avx2(double seconds, long long *n) {
    __m256 a = _mm256_set1_ps(1.0001f), b = _mm256_set1_ps(0.9999f);
#define DECL(i) __m256 c##i = _mm256_set1_ps((float)(i));
#define STEP(i) c##i = _mm256_fmadd_ps(a, b, c##i);
#define SUM(i) s = _mm256_add_ps(s, c##i);
    CHAINS(DECL)
    double t0 = now(), t;
    do {
        for (int i = 0; i < INNER; i++) { CHAINS(STEP) }
        *n += INNER;
        t = now();
    } while (t - t0 < seconds);
    __m256 s = _mm256_setzero_ps();
    CHAINS(SUM)
    sink(&s, sizeof s);
    return (double)*n * 12 * 8 / (t - t0);
#undef DECL
#undef STEP
#undef SUM
}

__attribute__((target("avx512f"))) static double fp32_avx512(double seconds, long long *n) {
    __m512 a = _mm512_set1_ps(1.0001f), b = _mm512_set1_ps(0.9999f);
#define DECL(i) __m512 c##i = _mm512_set1_ps((float)(i));
#define STEP(i) c##i = _mm512_fmadd_ps(a, b, c##i);
#define SUM(i) s = _mm512_add_ps(s, c##i);
    CHAINS(DECL)
    double t0 = now(), t;
    do {
        for (int i = 0; i < INNER; i++) { CHAINS(STEP) }
        *n += INNER;
        t = now();
    } while (t - t0 < seconds);
    __m512 s = _mm512_setzero_ps();
    CHAINS(SUM)
    sink(&s, sizeof s);
    return (double)*n * 12 * 16 / (t - t0);
#undef DECL
#undef STEP
#undef SUM
}

__attribute__((target("avx512f,avx512vnni"))) static double int8_vnni(double seconds, long long *n) {
    __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(5);
#define DECL(i) __m512i c##i = _mm512_set1_epi32(i);
#define STEP(i) c##i = _mm512_dpbusd_epi32(c##i, a, b);
#define SUM(i) s = _mm512_add_epi32(s, c##i);
    CHAINS(DECL)
    double t0 = now(), t;
    do {
        for (int i = 0; i < INNER; i++) { CHAINS(STEP) }
        *n += INNER;
        t = now();
    } while (t - t0 < seconds);
    __m512i s = _mm512_setzero_si512();
    CHAINS(SUM)
    sink(&s, sizeof s);
    return (double)*n * 12 * 64 / (t - t0);
#undef DECL
#undef STEP
#undef SUM
}

__attribute__((target("avx512f,avx512bf16"))) static double bf16_avx512(double seconds, long long *n) {
    __m512 one = _mm512_set1_ps(1.0f);
    __m512bh a = _mm512_cvtne2ps_pbh(one, one), b = _mm512_cvtne2ps_pbh(one, one);
#define DECL(i) __m512 c##i = _mm512_set1_ps((float)(i));
#define STEP(i) c##i = _mm512_dpbf16_ps(c##i, a, b);
#define SUM(i) s = _mm512_add_ps(s, c##i);
    CHAINS(DECL)
    double t0 = now(), t;
    do {
        for (int i = 0; i < INNER; i++) { CHAINS(STEP) }
        *n += INNER;
        t = now();
    } while (t - t0 < seconds);
    __m512 s = _mm512_setzero_ps();
    CHAINS(SUM)
    sink(&s, sizeof s);
    return (double)*n * 12 * 32 / (t - t0);
#undef DECL
#undef STEP
#undef SUM
}

/* AMX: Linux hands out the tile data state only on request (arch_prctl ARCH_REQ_XCOMP_PERM, XTILEDATA). */
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

struct tilecfg {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};

__attribute__((target("amx-tile"))) static int amx_setup(void) {
    if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)) return -1;
    struct tilecfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 6; t++) { cfg.rows[t] = 16; cfg.colsb[t] = 64; }  /* tmm0-3 C, tmm4 A, tmm5 B */
    _tile_loadconfig(&cfg);
    static uint8_t ab[16 * 64];
    memset(ab, 1, sizeof ab);
    _tile_loadd(4, ab, 64);
    _tile_loadd(5, ab, 64);
    _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
    return 0;
}

__attribute__((target("amx-tile"))) static void amx_finish(void) {
    static int32_t c[16 * 16];
    _tile_stored(0, c, 64);
    _tile_release();
    sink(c, sizeof c);
}

__attribute__((target("amx-tile,amx-int8"))) static double int8_amx(double seconds, long long *n) {
    if (amx_setup()) return -1;
    double t0 = now(), t;
    do {
        for (int i = 0; i < INNER / 16; i++) {
            _tile_dpbssd(0, 4, 5); _tile_dpbssd(1, 4, 5); _tile_dpbssd(2, 4, 5); _tile_dpbssd(3, 4, 5);
        }
        *n += INNER / 16;
        t = now();
    } while (t - t0 < seconds);
    amx_finish();
    return (double)*n * 4 * 16 * 16 * 64 / (t - t0);
}

__attribute__((target("amx-tile,amx-bf16"))) static double bf16_amx(double seconds, long long *n) {
    if (amx_setup()) return -1;
    double t0 = now(), t;
    do {
        for (int i = 0; i < INNER / 16; i++) {
            _tile_dpbf16ps(0, 4, 5); _tile_dpbf16ps(1, 4, 5); _tile_dpbf16ps(2, 4, 5); _tile_dpbf16ps(3, 4, 5);
        }
        *n += INNER / 16;
        t = now();
    } while (t - t0 < seconds);
    amx_finish();
    return (double)*n * 4 * 16 * 16 * 32 / (t - t0);
}

int main(int argc, char **argv) {
    static const struct { const char *name; double (*fn)(double, long long *); } modes[] = {
        {"fp32-avx2", fp32_avx2}, {"fp32-avx512", fp32_avx512}, {"int8-vnni", int8_vnni},
        {"bf16-avx512", bf16_avx512}, {"int8-amx", int8_amx}, {"bf16-amx", bf16_amx},
    };
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODE [SECONDS]\n", argv[0]);
        return 2;
    }
    double seconds = argc > 2 ? atof(argv[2]) : 0.5;
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
        if (strcmp(argv[1], modes[i].name) == 0) {
            long long n = 0;
            double rate = modes[i].fn(seconds, &n);
            if (rate < 0) {
                fprintf(stderr, "%s: the kernel refused the AMX tile state\n", argv[1]);
                return 1;
            }
            printf("%.6e\n", rate);
            return 0;
        }
    }
    fprintf(stderr, "unknown mode %s\n", argv[1]);
    return 2;
}
