// spin: never returns (for the device host's watchdog: execution_timeout).
// Buffers: out (output, 4 bytes). Params: none.
#include "dtee_gpu.h"

DTEE_KERNEL void spin(volatile u32 *out) {
  u32 i = 0;
  for (;;) out[0] = ++i;
}
