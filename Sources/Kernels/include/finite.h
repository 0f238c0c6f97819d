// Finiteness scan of float buffers (weights loaded from disk, weights about to be published).
#ifndef SELM_FINITE_H
#define SELM_FINITE_H
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

// Index of the first element of x[0..n) that is NaN or +-Inf, or -1 when every element is finite.
// One pass over the bits (exponent all ones), vectorised by the compiler: memory bandwidth bound.
ptrdiff_t first_nonfinite(const float *x, size_t n);

#ifdef __cplusplus
}
#endif
#endif
