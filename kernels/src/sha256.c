/*
 * sha256: the SHA-256 digest (FIPS 180-4) of an input of any length.
 *
 * Entry: "sha256", () -> i32.
 * Buffers: input "data" (any length, possibly empty); output "digest" (capacity at least 32
 *          bytes; a smaller one traps: output_limit_exceeded), which receives the 32-byte digest.
 * Params:  none.
 * Returns: 0 on success; 3 if a buffer is missing or cannot be read or written as above.
 *
 * The input is streamed through a fixed 64 KiB chunk, so hashing a large input needs no memory of
 * its size.
 */
#include "dtee_kernel.h"

#define CHUNK_BYTES 65536

static unsigned char chunk[CHUNK_BYTES];

struct sha256 {
    uint32_t state[8];
    uint64_t length;         /* bytes hashed so far */
    unsigned char block[64]; /* the partial block not yet compressed */
    size_t block_used;       /* bytes in block */
};

static const uint32_t round_constants[64] = {
    0x428a2f98u, 0x71374491u, 0xb5c0fbcfu, 0xe9b5dba5u, 0x3956c25bu, 0x59f111f1u, 0x923f82a4u,
    0xab1c5ed5u, 0xd807aa98u, 0x12835b01u, 0x243185beu, 0x550c7dc3u, 0x72be5d74u, 0x80deb1feu,
    0x9bdc06a7u, 0xc19bf174u, 0xe49b69c1u, 0xefbe4786u, 0x0fc19dc6u, 0x240ca1ccu, 0x2de92c6fu,
    0x4a7484aau, 0x5cb0a9dcu, 0x76f988dau, 0x983e5152u, 0xa831c66du, 0xb00327c8u, 0xbf597fc7u,
    0xc6e00bf3u, 0xd5a79147u, 0x06ca6351u, 0x14292967u, 0x27b70a85u, 0x2e1b2138u, 0x4d2c6dfcu,
    0x53380d13u, 0x650a7354u, 0x766a0abbu, 0x81c2c92eu, 0x92722c85u, 0xa2bfe8a1u, 0xa81a664bu,
    0xc24b8b70u, 0xc76c51a3u, 0xd192e819u, 0xd6990624u, 0xf40e3585u, 0x106aa070u, 0x19a4c116u,
    0x1e376c08u, 0x2748774cu, 0x34b0bcb5u, 0x391c0cb3u, 0x4ed8aa4au, 0x5b9cca4fu, 0x682e6ff3u,
    0x748f82eeu, 0x78a5636fu, 0x84c87814u, 0x8cc70208u, 0x90befffau, 0xa4506cebu, 0xbef9a3f7u,
    0xc67178f2u,
};

static uint32_t rotr(uint32_t x, unsigned n) {
    return (x >> n) | (x << (32 - n));
}

static void sha256_init(struct sha256 *h) {
    static const uint32_t initial[8] = {
        0x6a09e667u, 0xbb67ae85u, 0x3c6ef372u, 0xa54ff53au,
        0x510e527fu, 0x9b05688cu, 0x1f83d9abu, 0x5be0cd19u,
    };
    for (int i = 0; i < 8; i++) {
        h->state[i] = initial[i];
    }
    h->length = 0;
    h->block_used = 0;
}

/* Compresses one 64-byte block into the state. */
static void sha256_compress(uint32_t state[8], const unsigned char *block) {
    uint32_t w[64];
    /* Fully unrolled: the sandbox checks fuel and its deadline at every loop iteration, which
     * costs a loop of a few instructions more than the instructions (1.6x native -> 0.95x;
     * kernels/README.md). */
#pragma clang loop unroll(full)
    for (int t = 0; t < 16; t++) {
        w[t] = (uint32_t)block[4 * t] << 24 | (uint32_t)block[4 * t + 1] << 16 |
               (uint32_t)block[4 * t + 2] << 8 | (uint32_t)block[4 * t + 3];
    }
#pragma clang loop unroll(full)
    for (int t = 16; t < 64; t++) {
        uint32_t s0 = rotr(w[t - 15], 7) ^ rotr(w[t - 15], 18) ^ (w[t - 15] >> 3);
        uint32_t s1 = rotr(w[t - 2], 17) ^ rotr(w[t - 2], 19) ^ (w[t - 2] >> 10);
        w[t] = w[t - 16] + s0 + w[t - 7] + s1;
    }
    uint32_t a = state[0], b = state[1], c = state[2], d = state[3];
    uint32_t e = state[4], f = state[5], g = state[6], h = state[7];
#pragma clang loop unroll(full)
    for (int t = 0; t < 64; t++) {
        uint32_t sum1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25);
        uint32_t choose = (e & f) ^ (~e & g);
        uint32_t temp1 = h + sum1 + choose + round_constants[t] + w[t];
        uint32_t sum0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22);
        uint32_t majority = (a & b) ^ (a & c) ^ (b & c);
        uint32_t temp2 = sum0 + majority;
        h = g;
        g = f;
        f = e;
        e = d + temp1;
        d = c;
        c = b;
        b = a;
        a = temp1 + temp2;
    }
    state[0] += a;
    state[1] += b;
    state[2] += c;
    state[3] += d;
    state[4] += e;
    state[5] += f;
    state[6] += g;
    state[7] += h;
}

static void sha256_update(struct sha256 *h, const unsigned char *data, size_t len) {
    h->length += len;
    if (h->block_used > 0) {
        size_t take = 64 - h->block_used;
        if (take > len) {
            take = len;
        }
        memcpy(h->block + h->block_used, data, take);
        h->block_used += take;
        data += take;
        len -= take;
        if (h->block_used < 64) {
            return;
        }
        sha256_compress(h->state, h->block);
        h->block_used = 0;
    }
    while (len >= 64) {
        sha256_compress(h->state, data);
        data += 64;
        len -= 64;
    }
    memcpy(h->block, data, len);
    h->block_used = len;
}

static void sha256_final(struct sha256 *h, unsigned char digest[32]) {
    uint64_t bit_length = h->length * 8;
    h->block[h->block_used++] = 0x80;
    if (h->block_used > 56) {
        memset(h->block + h->block_used, 0, 64 - h->block_used);
        sha256_compress(h->state, h->block);
        h->block_used = 0;
    }
    memset(h->block + h->block_used, 0, 56 - h->block_used);
    for (int i = 0; i < 8; i++) {
        h->block[56 + i] = (unsigned char)(bit_length >> (56 - 8 * i));
    }
    sha256_compress(h->state, h->block);
    for (int i = 0; i < 8; i++) {
        digest[4 * i] = (unsigned char)(h->state[i] >> 24);
        digest[4 * i + 1] = (unsigned char)(h->state[i] >> 16);
        digest[4 * i + 2] = (unsigned char)(h->state[i] >> 8);
        digest[4 * i + 3] = (unsigned char)h->state[i];
    }
}

DTEE_EXPORT("sha256")
int32_t sha256(void) {
    int32_t data = dtee_buffer("data");
    int32_t out = dtee_buffer("digest");
    if (data < 0 || out < 0) {
        return 3;
    }
    int64_t length = dtee_buffer_len(data);
    if (length < 0) {
        return 3;
    }
    struct sha256 h;
    sha256_init(&h);
    uint64_t offset = 0;
    while (offset < (uint64_t)length) {
        int64_t got = dtee_read(data, offset, chunk, sizeof chunk);
        if (got <= 0) {
            return 3;
        }
        sha256_update(&h, chunk, (size_t)got);
        offset += (uint64_t)got;
    }
    unsigned char digest[32];
    sha256_final(&h, digest);
    if (dtee_write(out, 0, digest, sizeof digest) != 0) {
        return 3;
    }
    return 0;
}
