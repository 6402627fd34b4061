// sha256: the SHA-256 digest of each of n independent 64-byte messages, one per thread:
// digests[32 * i ..] = SHA-256(messages[64 * i .. 64 * i + 64]).
// Buffers: messages (input, 64 × n bytes), digests (output, 32 × n bytes). Params: n (u32).
#include "dtee_gpu.h"

DTEE_DEVICE static const u32 K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2};

static DTEE_DEVICE inline u32 rotr(u32 x, u32 n) { return (x >> n) | (x << (32 - n)); }

static DTEE_DEVICE void compress(u32 state[8], const u32 block[16]) {
  u32 w[64];
  for (int i = 0; i < 16; ++i) w[i] = block[i];
  for (int i = 16; i < 64; ++i) {
    u32 s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
    u32 s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
    w[i] = w[i - 16] + s0 + w[i - 7] + s1;
  }
  u32 a = state[0], b = state[1], c = state[2], d = state[3];
  u32 e = state[4], f = state[5], g = state[6], h = state[7];
  for (int i = 0; i < 64; ++i) {
    u32 t1 = h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
    u32 t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
    h = g; g = f; f = e; e = d + t1;
    d = c; c = b; b = a; a = t1 + t2;
  }
  state[0] += a; state[1] += b; state[2] += c; state[3] += d;
  state[4] += e; state[5] += f; state[6] += g; state[7] += h;
}

DTEE_KERNEL void sha256(const unsigned char *messages, unsigned char *digests, u32 n) {
  u32 i = dtee_global_x();
  if (i >= n) return;
  const unsigned char *m = messages + (u64)i * 64;
  u32 state[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                  0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  u32 block[16];
  for (int j = 0; j < 16; ++j)
    block[j] = ((u32)m[4 * j] << 24) | ((u32)m[4 * j + 1] << 16) | ((u32)m[4 * j + 2] << 8) |
               (u32)m[4 * j + 3];
  compress(state, block);
  // The padding block of a 64-byte message: 0x80, zeros, the length in bits (512).
  for (int j = 0; j < 16; ++j) block[j] = 0;
  block[0] = 0x80000000u;
  block[15] = 512;
  compress(state, block);
  unsigned char *d = digests + (u64)i * 32;
  for (int j = 0; j < 8; ++j) {
    d[4 * j] = state[j] >> 24;
    d[4 * j + 1] = state[j] >> 16;
    d[4 * j + 2] = state[j] >> 8;
    d[4 * j + 3] = state[j];
  }
}
