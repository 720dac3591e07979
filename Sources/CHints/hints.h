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
#endif
