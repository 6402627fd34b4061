// matmul: c = a × b for row-major f32 matrices, a: m × k, b: k × n, c: m × n, in 16 × 16
// tiles staged in shared memory.
// Buffers: a, b (inputs), c (output). Params: m, n, k (u32).
// Launch: block (16, 16, 1), grid (ceil(n / 16), ceil(m / 16), 1).
#include "dtee_gpu.h"

#define TILE 16

DTEE_KERNEL void matmul(const float *a, const float *b, float *c, u32 m, u32 n, u32 k) {
  DTEE_SHARED float ta[TILE][TILE];
  DTEE_SHARED float tb[TILE][TILE];
  u32 tx = dtee_thread_x(), ty = dtee_thread_y();
  u32 row = dtee_block_y() * TILE + ty;
  u32 col = dtee_block_x() * TILE + tx;
  float sum = 0.0f;
  for (u32 t = 0; t < (k + TILE - 1) / TILE; ++t) {
    u32 ka = t * TILE + tx, kb = t * TILE + ty;
    ta[ty][tx] = (row < m && ka < k) ? a[(u64)row * k + ka] : 0.0f;
    tb[ty][tx] = (col < n && kb < k) ? b[(u64)kb * n + col] : 0.0f;
    dtee_sync();
    for (u32 i = 0; i < TILE; ++i) sum += ta[ty][i] * tb[i][tx];
    dtee_sync();
  }
  if (row < m && col < n) c[(u64)row * n + col] = sum;
}
