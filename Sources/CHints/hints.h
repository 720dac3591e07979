// Cache hints Swift cannot spell: clang's _mm_prefetch is a macro, which Swift does not import.
#ifndef QUANTKIT_HINTS_H
#define QUANTKIT_HINTS_H
static inline __attribute__((always_inline)) void quantkit_prefetch(const void *p) { __builtin_prefetch(p, 0, 3); }
#endif
