/*
 * saxpy: out[i] = a * x[i] + y[i] over f32 vectors.
 *
 * Entry: "saxpy", () -> i32.
 * Buffers: inputs "x" and "y", little-endian f32 arrays of the same length; output "out", at
 *          least as large as "x" (a smaller one traps: output_limit_exceeded).
 * Params:  "a" (f32).
 * Returns: 0 on success; 1 if "x" and "y" differ in length or a length is not a multiple of 4;
 *          3 if a buffer is missing or cannot be read or written as above. A missing "a" traps.
 *
 * The vectors are streamed through fixed chunks, so memory does not grow with their size. Each
 * element is rounded twice (a * x[i], then + y[i]); the build uses -ffp-contract=off so no fused
 * multiply-add ever changes that, and a reference computing `a * x + y` in f32 gets identical bits.
 */
#include "dtee_kernel.h"

#define CHUNK_FLOATS 4096

static float chunk_x[CHUNK_FLOATS];
static float chunk_y[CHUNK_FLOATS];

DTEE_EXPORT("saxpy")
int32_t saxpy(void) {
    int32_t x = dtee_buffer("x");
    int32_t y = dtee_buffer("y");
    int32_t out = dtee_buffer("out");
    if (x < 0 || y < 0 || out < 0) {
        return 3;
    }
    int64_t len_x = dtee_buffer_len(x);
    int64_t len_y = dtee_buffer_len(y);
    if (len_x < 0 || len_y < 0) {
        return 3;
    }
    if (len_x != len_y || len_x % 4 != 0) {
        return 1;
    }
    float a = dtee_param_f32("a");

    uint64_t total = (uint64_t)len_x;
    uint64_t offset = 0;
    while (offset < total) {
        uint64_t left = total - offset;
        size_t bytes = left < sizeof chunk_x ? (size_t)left : sizeof chunk_x;
        if (dtee_read(x, offset, chunk_x, bytes) != (int64_t)bytes ||
            dtee_read(y, offset, chunk_y, bytes) != (int64_t)bytes) {
            return 3;
        }
        size_t count = bytes / 4;
        /* Eight vectors per iteration: the sandbox checks fuel and its deadline once per loop
         * iteration, so a longer iteration pays for them less often (kernels/README.md). */
#pragma clang loop interleave_count(8)
        for (size_t i = 0; i < count; i++) {
            chunk_x[i] = a * chunk_x[i] + chunk_y[i];
        }
        if (dtee_write(out, offset, chunk_x, bytes) != 0) {
            return 3;
        }
        offset += bytes;
    }
    return 0;
}
