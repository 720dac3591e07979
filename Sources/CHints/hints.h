// CPU hints Swift cannot spell: clang's _mm_prefetch is a macro, which Swift does not import.
#ifndef QUANTKIT_HINTS_H
#define QUANTKIT_HINTS_H
static inline __attribute__((always_inline)) void quantkit_prefetch(const void *p) { __builtin_prefetch(p, 0, 3); }
// The spin-wait hint (x86 PAUSE): a waiting core yields pipeline resources and leaves the loop without a
// memory-order mis-speculation when the awaited store lands.
static inline __attribute__((always_inline)) void quantkit_spin_pause(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}
#if defined(__x86_64__)
#include <immintrin.h>
#include <cpuid.h>
// AVX512-VNNI's 256-bit byte dot product (vpdpbusd ymm): clang spells it as a macro, which Swift does not import.
// Only a module compiled with these features (KernelsVNNI) can inline it; it runs only where
// quantkit_cpu_has_avx512vnni() says the processor and the OS support it.
static inline __attribute__((always_inline, target("avx512vnni,avx512vl")))
__m256i quantkit_dpbusd256(__m256i acc, __m256i u8, __m256i s8) { return _mm256_dpbusd_epi32(acc, u8, s8); }

// 1 when the CPU has AVX512F, BW, VL and VNNI and the OS saves the AVX-512 register state (XCR0 bits 1, 2, 5-7).
static inline int quantkit_cpu_has_avx512vnni(void) {
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return 0;   // OSXSAVE
    unsigned int lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & 0xE6u) != 0xE6u) return 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    const unsigned int f = 1u << 16, bw = 1u << 30, vl = 1u << 31;
    return (b & f) && (b & bw) && (b & vl) && (c & (1u << 11));
}
#endif
#endif
