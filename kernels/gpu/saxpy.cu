// saxpy: y[i] = a * x[i] + y[i] for i < n.
// Buffers: x (input, f32 × n), y (read_write state or input), out (output, f32 × n).
// Params: a (f32), n (u32). Launch: any grid × block covering n threads.
#include "dtee_gpu.h"

DTEE_KERNEL void saxpy(const float *x, const float *y, float *out, float a, u32 n) {
  u32 i = dtee_global_x();
  if (i < n) out[i] = a * x[i] + y[i];
}
