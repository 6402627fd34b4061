// oob: writes far outside its buffer (for a kernel fault: an illegal address).
// Buffers: out (output). Params: none.
#include "dtee_gpu.h"

DTEE_KERNEL void oob(volatile u32 *out) {
  out[(u64)1 << 36] = 1;  // 256 GiB past the buffer
}
