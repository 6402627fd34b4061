// shared: uses as much dynamic shared memory as the launch gives it (launch.shared_mem_bytes):
// a job that asks for more than a block may have is refused before launch.
// Buffers: out (output, 4 bytes). Params: words (u32): how many 4-byte words of shared memory to
// use, 1 to shared_mem_bytes / 4.
#include "dtee_gpu.h"

extern DTEE_SHARED u32 dtee_dynamic_shared[];

DTEE_KERNEL void shared(u32 *out, u32 words) {
  u32 t = dtee_thread_x();
  for (u32 i = t; i < words; i += dtee_block_dim_x()) dtee_dynamic_shared[i] = i;
  dtee_sync();
  if (t == 0) out[0] = dtee_dynamic_shared[words - 1];
}
