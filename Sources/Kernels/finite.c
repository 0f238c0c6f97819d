#include "finite.h"
#include <stdint.h>
#include <string.h>

ptrdiff_t first_nonfinite(const float *x, size_t n) {
    enum { BLOCK = 4096 };
    for (size_t start = 0; start < n; start += BLOCK) {
        size_t end = n - start < BLOCK ? n : start + BLOCK;
        // Branch-free over the block (vectorises); exact position only for the block that hits.
        uint32_t hit = 0;
        for (size_t i = start; i < end; i++) {
            uint32_t bits;
            memcpy(&bits, x + i, sizeof bits);
            hit |= (bits & 0x7f800000u) == 0x7f800000u;
        }
        if (hit) {
            for (size_t i = start; i < end; i++) {
                uint32_t bits;
                memcpy(&bits, x + i, sizeof bits);
                if ((bits & 0x7f800000u) == 0x7f800000u) return (ptrdiff_t)i;
            }
        }
    }
    return -1;
}
