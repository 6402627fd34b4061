/*
 * matmul: c = a . b for row-major f32 matrices.
 *
 * Entry: "matmul", () -> i32.
 * Buffers: inputs "a" (m x k) and "b" (k x n), little-endian f32, row-major; output "c" (m x n),
 *          capacity at least m * n * 4 bytes (a smaller one traps: output_limit_exceeded).
 * Params:  "m", "n", "k" (u32). A missing one traps.
 * Returns: 0 on success; 1 if "a" is not m * k * 4 bytes or "b" is not k * n * 4 bytes; 2 if
 *          dtee_alloc fails (the matrices do not fit in wasm32 memory); 3 if a buffer is missing
 *          or cannot be read or written as above.
 *
 * A triple loop in i-k-j order (the inner one vectorised, eight vectors per iteration): every
 * c[i][j] starts at 0.0f and accumulates a[i][p] * b[p][j] for p = 0, 1, ..., k-1, in f32, each
 * product and sum rounded on its own (-ffp-contract=off, no fused multiply-add). A reference
 * that sums in the same order gets bit-identical results:
 *
 *     for i in 0..m { for p in 0..k { for j in 0..n { c[i*n+j] += a[i*k+p] * b[p*n+j] } } }
 */
#include "dtee_kernel.h"

DTEE_EXPORT("matmul")
int32_t matmul(void) {
    int32_t buf_a = dtee_buffer("a");
    int32_t buf_b = dtee_buffer("b");
    int32_t buf_c = dtee_buffer("c");
    if (buf_a < 0 || buf_b < 0 || buf_c < 0) {
        return 3;
    }
    uint64_t m = dtee_param_u32("m");
    uint64_t n = dtee_param_u32("n");
    uint64_t k = dtee_param_u32("k");

    /* A product of two u32 values always fits in 64 bits; scaling it to bytes might not, so cap
     * the element counts first (anything that large cannot fit in wasm32 memory anyway). */
    uint64_t a_elems = m * k;
    uint64_t b_elems = k * n;
    uint64_t c_elems = m * n;
    const uint64_t max_elems = (uint64_t)1 << 61;
    if (a_elems > max_elems || b_elems > max_elems || c_elems > max_elems) {
        return 2;
    }
    int64_t len_a = dtee_buffer_len(buf_a);
    int64_t len_b = dtee_buffer_len(buf_b);
    if (len_a < 0 || len_b < 0) {
        return 3;
    }
    if ((uint64_t)len_a != a_elems * 4 || (uint64_t)len_b != b_elems * 4) {
        return 1;
    }
    if (a_elems * 4 > SIZE_MAX || b_elems * 4 > SIZE_MAX || c_elems * 4 > SIZE_MAX) {
        return 2;
    }

    float *a = (float *)dtee_alloc((size_t)(a_elems * 4));
    float *b = (float *)dtee_alloc((size_t)(b_elems * 4));
    float *c = (float *)dtee_alloc((size_t)(c_elems * 4));
    if (a == NULL || b == NULL || c == NULL) {
        return 2;
    }
    if (dtee_read(buf_a, 0, a, (size_t)(a_elems * 4)) != len_a ||
        dtee_read(buf_b, 0, b, (size_t)(b_elems * 4)) != len_b) {
        return 3;
    }

    size_t rows = (size_t)m, cols = (size_t)n, inner = (size_t)k;
    for (size_t i = 0; i < rows; i++) {
        float *c_row = c + i * cols;
        for (size_t j = 0; j < cols; j++) {
            c_row[j] = 0.0f;
        }
        for (size_t p = 0; p < inner; p++) {
            float a_ip = a[i * inner + p];
            const float *b_row = b + p * cols;
            /* Eight vectors per iteration: the sandbox's per-iteration checks (fuel, deadline)
             * are paid once per 32 columns (kernels/README.md). Lanes are independent, so the
             * sums keep their order. */
#pragma clang loop interleave_count(8)
            for (size_t j = 0; j < cols; j++) {
                c_row[j] += a_ip * b_row[j];
            }
        }
    }

    if (dtee_write(buf_c, 0, c, (size_t)(c_elems * 4)) != 0) {
        return 3;
    }
    return 0;
}
