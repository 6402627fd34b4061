// vadd: out[i] = a[i] + b[i] for i < n.
// Buffers: a, b (inputs, f32 × n), out (output, f32 × n). Params: n (u32).
#include "dtee_gpu.h"

DTEE_KERNEL void vadd(const float *a, const float *b, float *out, u32 n) {
  u32 i = dtee_global_x();
  if (i < n) out[i] = a[i] + b[i];
}
