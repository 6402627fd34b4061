/*
 * sha256_host: the SHA-256 digest of an input, computed by the host (the buffer_sha256 host
 * primitive) instead of in WebAssembly: the same job as sha256.c, charged one unit of fuel per
 * byte instead of about 134, and the input is never copied into the kernel's memory.
 *
 * Entry: "sha256", () -> i32.
 * Buffers: input "data" (any length, possibly empty); output "digest" (capacity at least 32
 *          bytes; a smaller one traps: output_limit_exceeded), which receives the 32-byte digest.
 * Params:  none.
 * Returns: 0 on success; 3 if a buffer is missing or cannot be read or written as above.
 */
#include "dtee_kernel.h"

DTEE_EXPORT("sha256")
int32_t sha256(void) {
    int32_t data = dtee_buffer("data");
    int32_t out = dtee_buffer("digest");
    if (data < 0 || out < 0) {
        return 3;
    }
    int64_t length = dtee_buffer_len(data);
    unsigned char digest[32];
    if (length < 0 || dtee_raw_buffer_sha256(data, 0, length, digest) != 0) {
        return 3;
    }
    if (dtee_write(out, 0, digest, sizeof digest) != 0) {
        return 3;
    }
    return 0;
}
