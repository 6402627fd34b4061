/*
 * dtee_kernel.h, NATIVE variant: the same kernel API as schemas/include/dtee_kernel.h, for
 * building the sample C kernels as ordinary x86-64 code (loadtest/kernels.sh), so that a kernel's
 * time in the wasm backend can be compared with the same C run natively. The host functions are
 * implemented by loadtest/native/harness.c; dtee_alloc is calloc; memcpy and friends are libc's.
 * loadtest/kernels.sh builds this header as prologue.h, the helpers of the wasm header (from
 * dtee_strlen to the memory section, unchanged), then epilogue.h.
 */
#ifndef DTEE_KERNEL_H
#define DTEE_KERNEL_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define DTEE_EXPORT(name) __attribute__((used))
#define DTEE_ERR_BAD_INDEX (-1)
#define DTEE_ERR_ACCESS (-2)
#define DTEE_ERR_RANGE (-3)
#define DTEE_MAX_IO_CHUNK ((size_t)1 << 30)

int32_t dtee_raw_buffer_find(const char *name, int32_t name_len);
int64_t dtee_raw_buffer_len(int32_t buffer);
int32_t dtee_raw_buffer_read(int32_t buffer, int64_t offset, void *dst, int32_t len);
int32_t dtee_raw_buffer_write(int32_t buffer, int64_t offset, const void *src, int32_t len);
int32_t dtee_raw_buffer_set_len(int32_t buffer, int64_t len);
int32_t dtee_raw_param_find(const char *name, int32_t name_len);
int64_t dtee_raw_param_i64(int32_t param);
double dtee_raw_param_f64(int32_t param);

