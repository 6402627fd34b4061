/*
 * ed25519_verify: whether a signature verifies, through the host's Ed25519 primitive
 * (ed25519_verify: dtee's strict rule, the one results are verified by).
 *
 * Entry: "verify", () -> i32.
 * Buffers: inputs "public_key" (32 bytes), "signature" (64 bytes) and "message" (at most 1 MiB);
 *          output "valid" (capacity at least 1 byte), which receives 1 if the signature
 *          verifies and 0 if it does not.
 * Params:  none.
 * Returns: 0 (whatever the verdict); 3 if a buffer is missing, of the wrong length, or cannot be
 *          read or written.
 */
#include "dtee_kernel.h"

#define MAX_MESSAGE (1 << 20)

static unsigned char message[MAX_MESSAGE];

/* Reads all of a buffer of exactly `len` bytes (any length up to `len` when `exact` is 0);
 * returns its length, or -1. */
static int64_t read_all(const char *name, void *dst, int64_t len, int exact) {
    int32_t buffer = dtee_buffer(name);
    int64_t length = dtee_buffer_len(buffer);
    if (buffer < 0 || length < 0 || length > len || (exact && length != len)) {
        return -1;
    }
    return dtee_read(buffer, 0, dst, (size_t)length) == length ? length : -1;
}

DTEE_EXPORT("verify")
int32_t verify(void) {
    unsigned char public_key[32];
    unsigned char signature[64];
    int64_t message_len = read_all("message", message, MAX_MESSAGE, 0);
    if (read_all("public_key", public_key, 32, 1) < 0 || read_all("signature", signature, 64, 1) < 0
        || message_len < 0) {
        return 3;
    }
    int32_t verdict = dtee_raw_ed25519_verify(public_key, message, (int32_t)message_len, signature);
    unsigned char valid = verdict == 1;
    if (verdict < 0 || dtee_write(dtee_buffer("valid"), 0, &valid, 1) != 0) {
        return 3;
    }
    return 0;
}
