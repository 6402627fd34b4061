// dtee_gpu.h: what a dtee GPU kernel needs, for one source built two ways (kernels/build.sh):
//   - CUDA: clang-15 -x cuda --cuda-device-only -nocudainc -nocudalib (no CUDA SDK) -> PTX;
//   - HIP:  clang-15 -x hip  --cuda-device-only -nogpuinc -nogpulib (no ROCm headers) -> a code
//           object (.hsaco) per gfx architecture.
// Neither SDK's headers are used, so the build is the same on every machine with clang-15.
//
// The job ABI (schemas/KERNEL_ABI.md, "GPU kernels"): the kernel is an `extern "C"` entry point
// whose parameters are one device pointer per buffer, in job order, then the job's parameters,
// in order, by value (i32, u32, i64, u64, f32, f64).
#pragma once

#define DTEE_KERNEL extern "C" __attribute__((global))
#define DTEE_DEVICE __attribute__((device))
#define DTEE_SHARED __attribute__((shared))

typedef unsigned int u32;
typedef unsigned long long u64;

#if defined(__HIP__)
// AMD GPUs: work-item and work-group ids and sizes from the AMDGCN builtins.
static DTEE_DEVICE inline u32 dtee_thread_x(void) { return __builtin_amdgcn_workitem_id_x(); }
static DTEE_DEVICE inline u32 dtee_thread_y(void) { return __builtin_amdgcn_workitem_id_y(); }
static DTEE_DEVICE inline u32 dtee_block_x(void) { return __builtin_amdgcn_workgroup_id_x(); }
static DTEE_DEVICE inline u32 dtee_block_y(void) { return __builtin_amdgcn_workgroup_id_y(); }
static DTEE_DEVICE inline u32 dtee_block_dim_x(void) {
  // The dispatch packet holds the work-group size (hsa_kernel_dispatch_packet_t, offset 4).
  return ((const unsigned short *)__builtin_amdgcn_dispatch_ptr())[2];
}
static DTEE_DEVICE inline u32 dtee_block_dim_y(void) {
  return ((const unsigned short *)__builtin_amdgcn_dispatch_ptr())[3];
}
static DTEE_DEVICE inline u32 dtee_grid_dim_x(void) {
  // grid_size_x (offset 12) counts work-items; divide by the work-group size.
  return ((const u32 *)__builtin_amdgcn_dispatch_ptr())[3] / dtee_block_dim_x();
}
static DTEE_DEVICE inline void dtee_sync(void) {
  __builtin_amdgcn_fence(__ATOMIC_RELEASE, "workgroup");
  __builtin_amdgcn_s_barrier();
  __builtin_amdgcn_fence(__ATOMIC_ACQUIRE, "workgroup");
}
#else
// NVIDIA GPUs: PTX special registers.
static DTEE_DEVICE inline u32 dtee_thread_x(void) { return __nvvm_read_ptx_sreg_tid_x(); }
static DTEE_DEVICE inline u32 dtee_thread_y(void) { return __nvvm_read_ptx_sreg_tid_y(); }
static DTEE_DEVICE inline u32 dtee_block_x(void) { return __nvvm_read_ptx_sreg_ctaid_x(); }
static DTEE_DEVICE inline u32 dtee_block_y(void) { return __nvvm_read_ptx_sreg_ctaid_y(); }
static DTEE_DEVICE inline u32 dtee_block_dim_x(void) { return __nvvm_read_ptx_sreg_ntid_x(); }
static DTEE_DEVICE inline u32 dtee_block_dim_y(void) { return __nvvm_read_ptx_sreg_ntid_y(); }
static DTEE_DEVICE inline u32 dtee_grid_dim_x(void) { return __nvvm_read_ptx_sreg_nctaid_x(); }
static DTEE_DEVICE inline void dtee_sync(void) { __syncthreads(); }
#endif

// The global index of this thread along x.
static DTEE_DEVICE inline u32 dtee_global_x(void) {
  return dtee_block_x() * dtee_block_dim_x() + dtee_thread_x();
}
