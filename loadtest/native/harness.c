/*
 * The native harness of loadtest/kernels.sh: implements the dtee host functions over plain
 * memory, gives the kernel (linked in, its entry named by -DENTRY=...) the same inputs the wasm
 * job gets, runs it RUNS times and prints the median time in microseconds and the output's
 * first bytes.
 *
 * Inputs (the same as kernels.sh makes for the wasm job):
 *   sha256: data = 1 MiB, byte i = (31 i + 7) mod 256; output digest (32).
 *   saxpy:  x[i] = (i mod 1000) / 7, y[i] = (i mod 777) / 3, n = 2^20 f32; a = 2.5; out (4n).
 *   matmul: a, b = 256 x 256 f32, a[i] = (i mod 100) / 10, b[i] = (i mod 37) / 5; c (4 * 256^2).
 */
#define _POSIX_C_SOURCE 199309L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int32_t ENTRY(void);

typedef struct {
    const char *name;
    uint8_t *data;
    int64_t len, cap;
    int output;
} Buf;
static Buf bufs[4];
static int nbufs;
typedef struct {
    const char *name;
    double value;
} Param;
static Param params[4];
static int nparams;

int32_t dtee_raw_buffer_find(const char *name, int32_t len) {
    for (int i = 0; i < nbufs; i++)
        if ((int32_t)strlen(bufs[i].name) == len && memcmp(bufs[i].name, name, (size_t)len) == 0) return i;
    return -1;
}
int64_t dtee_raw_buffer_len(int32_t b) {
    if (b < 0 || b >= nbufs) return -1;
    return bufs[b].output ? bufs[b].cap : bufs[b].len;
}
int32_t dtee_raw_buffer_read(int32_t b, int64_t offset, void *dst, int32_t len) {
    if (b < 0 || b >= nbufs) return -1;
    if (bufs[b].output) return -2;
    if (offset < 0 || len < 0 || offset > bufs[b].len) return -3;
    int64_t n = bufs[b].len - offset;
    if (n > len) n = len;
    memcpy(dst, bufs[b].data + offset, (size_t)n);
    return (int32_t)n;
}
int32_t dtee_raw_buffer_write(int32_t b, int64_t offset, const void *src, int32_t len) {
    if (b < 0 || b >= nbufs) return -1;
    if (!bufs[b].output) return -2;
    if (offset < 0 || len < 0) return -3;
    if (offset + len > bufs[b].cap) abort();
    memcpy(bufs[b].data + offset, src, (size_t)len);
    if (offset + len > bufs[b].len) bufs[b].len = offset + len;
    return len;
}
int32_t dtee_raw_buffer_set_len(int32_t b, int64_t len) {
    if (b < 0 || b >= nbufs) return -1;
    if (!bufs[b].output) return -2;
    if (len < 0) return -3;
    if (len > bufs[b].cap) abort();
    bufs[b].len = len;
    return 0;
}
int32_t dtee_raw_param_find(const char *name, int32_t len) {
    for (int i = 0; i < nparams; i++)
        if ((int32_t)strlen(params[i].name) == len && memcmp(params[i].name, name, (size_t)len) == 0) return i;
    return -1;
}
int64_t dtee_raw_param_i64(int32_t p) { return (int64_t)params[p].value; }
double dtee_raw_param_f64(int32_t p) { return params[p].value; }

static void input(const char *name, uint8_t *data, int64_t len) {
    bufs[nbufs++] = (Buf){name, data, len, len, 0};
}
static void output(const char *name, int64_t cap) {
    bufs[nbufs++] = (Buf){name, calloc((size_t)cap, 1), 0, cap, 1};
}
static void param(const char *name, double value) { params[nparams++] = (Param){name, value}; }

static float *floats(size_t n, int mod, float div) {
    float *f = malloc(n * 4);
    for (size_t i = 0; i < n; i++) f[i] = (float)(i % (size_t)mod) / div;
    return f;
}

static int compare(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    int runs = argc > 1 ? atoi(argv[1]) : 20;
    const char *kernel = KERNEL_NAME;
    if (strcmp(kernel, "sha256") == 0) {
        size_t n = (size_t)1 << 20;
        uint8_t *data = malloc(n);
        for (size_t i = 0; i < n; i++) data[i] = (uint8_t)((31 * i + 7) % 256);
        input("data", data, (int64_t)n);
        output("digest", 32);
    } else if (strcmp(kernel, "saxpy") == 0) {
        size_t n = (size_t)1 << 20;
        input("x", (uint8_t *)floats(n, 1000, 7.0f), (int64_t)(4 * n));
        input("y", (uint8_t *)floats(n, 777, 3.0f), (int64_t)(4 * n));
        output("out", (int64_t)(4 * n));
        param("a", 2.5);
    } else {
        size_t n = 256;
        input("a", (uint8_t *)floats(n * n, 100, 10.0f), (int64_t)(4 * n * n));
        input("b", (uint8_t *)floats(n * n, 37, 5.0f), (int64_t)(4 * n * n));
        output("c", (int64_t)(4 * n * n));
        param("m", 256);
        param("n", 256);
        param("k", 256);
    }
    double *us = malloc(sizeof(double) * (size_t)runs);
    for (int r = 0; r < runs; r++) {
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        int32_t rc = ENTRY();
        clock_gettime(CLOCK_MONOTONIC, &t1);
        if (rc != 0) {
            fprintf(stderr, "%s returned %d\n", kernel, rc);
            return 1;
        }
        us[r] = (double)(t1.tv_sec - t0.tv_sec) * 1e6 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e3;
    }
    qsort(us, (size_t)runs, sizeof(double), compare);
    Buf *out = &bufs[nbufs - 1];
    printf("%.0f ", us[runs / 2]);
    for (int i = 0; i < 8 && i < out->len; i++) printf("%02x", out->data[i]);
    printf("\n");
    return 0;
}
