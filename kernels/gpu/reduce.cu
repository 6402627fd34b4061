// reduce: partial sums of x, one per block: out[block] = sum of x[i] for the i of that block's
// grid-stride loop. The host (or a second launch) adds the partial sums.
// Buffers: x (input, f32 × n), out (output, f32 × grid). Params: n (u32).
// Launch: block (256, 1, 1), any grid; shared_mem_bytes 0.
#include "dtee_gpu.h"

#define THREADS 256

DTEE_KERNEL void reduce(const float *x, float *out, u32 n) {
  DTEE_SHARED float partial[THREADS];
  u32 t = dtee_thread_x();
  u32 stride = dtee_block_dim_x() * dtee_grid_dim_x();
  float sum = 0.0f;
  for (u32 i = dtee_global_x(); i < n; i += stride) sum += x[i];
  partial[t] = sum;
  dtee_sync();
  for (u32 half = THREADS / 2; half > 0; half /= 2) {
    if (t < half) partial[t] += partial[t + half];
    dtee_sync();
  }
  if (t == 0) out[dtee_block_x()] = partial[0];
}
