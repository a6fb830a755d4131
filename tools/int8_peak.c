/* The int8 multiply-accumulate peak of one core: independent AVX-512 VNNI vpdpbusd chains (each instruction is
 * 64 u8 x s8 MACs), enough of them to hide the instruction's latency. tools/bench_peers.py compiles this and runs
 * one copy per core; GMAC/s of a model divided by the sum is the share of the machine's int8 peak it reaches.
 * Usage: int8_peak SECONDS  -> prints MACs per second. */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 0.5;
    __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(5);
    __m512i c0 = _mm512_setzero_si512(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0;
    __m512i c8 = c0, c9 = c0, c10 = c0, c11 = c0;
    long long iters = 0;
    double t0 = now(), t;
    do {
        for (int i = 0; i < 100000; i++) {
            c0 = _mm512_dpbusd_epi32(c0, a, b); c1 = _mm512_dpbusd_epi32(c1, a, b);
            c2 = _mm512_dpbusd_epi32(c2, a, b); c3 = _mm512_dpbusd_epi32(c3, a, b);
            c4 = _mm512_dpbusd_epi32(c4, a, b); c5 = _mm512_dpbusd_epi32(c5, a, b);
            c6 = _mm512_dpbusd_epi32(c6, a, b); c7 = _mm512_dpbusd_epi32(c7, a, b);
            c8 = _mm512_dpbusd_epi32(c8, a, b); c9 = _mm512_dpbusd_epi32(c9, a, b);
            c10 = _mm512_dpbusd_epi32(c10, a, b); c11 = _mm512_dpbusd_epi32(c11, a, b);
        }
        iters += 100000;
        t = now();
    } while (t - t0 < seconds);
    __m512i s = _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(c0, c1), _mm512_add_epi32(c2, c3)),
                                 _mm512_add_epi32(_mm512_add_epi32(c4, c5), _mm512_add_epi32(c6, c7)));
    s = _mm512_add_epi32(s, _mm512_add_epi32(_mm512_add_epi32(c8, c9), _mm512_add_epi32(c10, c11)));
    int32_t out[16];
    _mm512_storeu_si512(out, s);
    /* print the checksum to stderr so the compiler cannot drop the loop */
    fprintf(stderr, "%d\n", out[0]);
    printf("%.6e\n", (double)iters * 12 * 64 / (t - t0));
    return 0;
}
