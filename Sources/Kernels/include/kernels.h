#ifndef SELM_KERNELS_H
#define SELM_KERNELS_H
#include <stddef.h>
#include <stdint.h>
#endif
