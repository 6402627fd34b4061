/*
 * dtee_kernel.h: the kernel-author side of the dtee WebAssembly host ABI.
 *
 * A dtee kernel is a wasm32 module that exports its linear memory as "memory" and an entry
 * function of type () -> i32 (0 = success, anything else = the job fails with kernel_failed and
 * that status) or () -> (). It imports nothing but the functions below, all from the module
 * "dtee": there is no WASI, no clock, no randomness and no other ambient access. The full ABI is
 * in schemas/KERNEL_ABI.md.
 *
 * Build a kernel with Debian's clang and lld, for example:
 *
 *     clang-15 --target=wasm32 -std=c11 -O2 -nostdlib -ffreestanding -ffp-contract=off \
 *         -Wall -Wextra -I schemas/include -fuse-ld=lld \
 *         -Wl,--no-entry -Wl,--stack-first -Wl,--strip-all \
 *         -o kernel.wasm kernel.c
 *
 * (If clang cannot find the linker, add --ld-path=/usr/bin/wasm-ld-15.)
 *
 * Everything here is header-only: the helpers are static inline functions, and the few things
 * that must exist once per module (the allocator's state and memcpy, memset, memmove, memcmp) are
 * weak definitions, so the header may be included from several source files of one kernel, and a
 * kernel that links its own memcpy overrides ours.
 */
#ifndef DTEE_KERNEL_H
#define DTEE_KERNEL_H

#if !defined(__wasm32__)
#error "dtee_kernel.h is for wasm32 kernels: compile with clang --target=wasm32"
#endif

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The C library's memory functions, defined (weak) at the end of this header. */
void *memcpy(void *__restrict dst, const void *__restrict src, size_t n);
void *memset(void *dst, int c, size_t n);
void *memmove(void *dst, const void *src, size_t n);
int memcmp(const void *a, const void *b, size_t n);

/* ---------------------------------------------------------------------------------------------
 * Exports
 * ------------------------------------------------------------------------------------------- */

/*
 * DTEE_EXPORT("name") exports the function it is written before under that name; the job's
 * kernel.entry names it. Example:
 *
 *     DTEE_EXPORT("run") int32_t run(void) { return 0; }
 */
#define DTEE_EXPORT(name) __attribute__((export_name(name)))

/* ---------------------------------------------------------------------------------------------
 * Status codes the host functions return
 * ------------------------------------------------------------------------------------------- */

/* The buffer or parameter index does not name one of the job's buffers. */
#define DTEE_ERR_BAD_INDEX (-1)
/* The buffer cannot be used that way: reading an output or a write_only or append_only state
 * buffer, or writing an input or a read_only state buffer. */
#define DTEE_ERR_ACCESS (-2)
/* The offset is past the end of the buffer, or the offset or length is negative. */
#define DTEE_ERR_RANGE (-3)

/* The largest length one host read or write is asked for by the helpers below (1 GiB); longer
 * transfers are split into pieces of at most this size. */
#define DTEE_MAX_IO_CHUNK ((size_t)1 << 30)

/* ---------------------------------------------------------------------------------------------
 * Raw host imports (module "dtee"). Pointers are offsets into this module's linear memory; a
 * pointer range outside linear memory traps.
 * ------------------------------------------------------------------------------------------- */

#define DTEE__IMPORT(name) __attribute__((import_module("dtee"), import_name(name)))

/*
 * buffer_find: the index of the job buffer called name[0..name_len), or -1 if the job has no
 * buffer of that name. Indexes are small non-negative integers, stable for the whole run. A name
 * outside linear memory TRAPS (kernel_trapped).
 */
DTEE__IMPORT("buffer_find")
int32_t dtee_raw_buffer_find(const char *name, int32_t name_len);

/*
 * buffer_len: for an input or a readable state buffer (read_only, read_write), its length in
 * bytes (an absent state key that may be absent has length 0); for an output or a writable
 * state buffer that cannot be read (write_only, append_only), its capacity in bytes. -1 for a bad
 * index.
 */
DTEE__IMPORT("buffer_len")
int64_t dtee_raw_buffer_len(int32_t buffer);

/*
 * buffer_read: copies min(len, length - offset) bytes of the buffer, from offset, to dst and
 * returns how many it copied (0 at the end). Returns -1 for a bad index, -2 if the buffer is not
 * readable (an output, a write_only or append_only state buffer), -3 if offset is past the end or
 * offset or len is negative.
 */
DTEE__IMPORT("buffer_read")
int32_t dtee_raw_buffer_read(int32_t buffer, int64_t offset, void *dst, int32_t len);

/*
 * buffer_write: copies len bytes from src into the buffer at offset and returns len. Returns -1
 * for a bad index, -2 if the buffer is not writable (an input, a read_only state buffer), -3 if
 * offset or len is negative. Writing past the buffer's capacity, or past the job's total output
 * limit, TRAPS: the job fails with output_limit_exceeded. A buffer's final length is the largest
 * end offset written; gaps read as zero. For an append_only state buffer offsets count from the
 * start of the bytes this job appends.
 */
DTEE__IMPORT("buffer_write")
int32_t dtee_raw_buffer_write(int32_t buffer, int64_t offset, const void *src, int32_t len);

/*
 * buffer_set_len: sets the final length of a writable buffer (truncating, or zero-filling).
 * Returns 0, -1 for a bad index, -2 if not writable, -3 if len is negative. A length past the
 * capacity or the job's output limit TRAPS (output_limit_exceeded). Shrinking gives no output
 * bytes back: each buffer counts against the output limit at its largest.
 */
DTEE__IMPORT("buffer_set_len")
int32_t dtee_raw_buffer_set_len(int32_t buffer, int64_t len);

/* param_find: the index of the scalar parameter called name[0..name_len), or -1. */
DTEE__IMPORT("param_find")
int32_t dtee_raw_param_find(const char *name, int32_t name_len);

/* param_i64: the parameter's value as a 64-bit integer (a float parameter is truncated toward
 * zero). A bad index TRAPS. */
DTEE__IMPORT("param_i64")
int64_t dtee_raw_param_i64(int32_t param);

/* param_f64: the parameter's value as a double. A bad index TRAPS. */
DTEE__IMPORT("param_f64")
double dtee_raw_param_f64(int32_t param);

/*
 * Host primitives: work the host does at native speed, charged in fuel (KERNEL_ABI.md, "Host
 * primitives"). Too little fuel left TRAPS (fuel_exhausted) before any work is done.
 *
 * buffer_sha256: the SHA-256 digest of min(len, length - offset) bytes of a readable buffer,
 * from offset, written as 32 bytes at dst; returns 0. The buffer is hashed where the host holds
 * it, without being copied into linear memory. Returns -1, -2, -3 as buffer_read does; a dst
 * range outside linear memory TRAPS.
 */
DTEE__IMPORT("buffer_sha256")
int32_t dtee_raw_buffer_sha256(int32_t buffer, int64_t offset, int64_t len, void *dst);

/* sha256: the SHA-256 digest of len bytes of linear memory at src, written as 32 bytes at dst
 * (the ranges may overlap); returns 0, or -3 if len is negative. A range outside linear memory
 * TRAPS. */
DTEE__IMPORT("sha256")
int32_t dtee_raw_sha256(const void *src, int32_t len, void *dst);

/* ed25519_verify: 1 if the 64-byte signature of message[0..message_len) verifies under the
 * 32-byte public key by dtee's strict rule (schemas/ATTESTATION.md §5, the rule results are
 * verified by), 0 if it does not (a malformed key or signature included), -3 if message_len is
 * negative. Charged 100,000 units of fuel plus one per message byte. A range outside linear
 * memory TRAPS. */
DTEE__IMPORT("ed25519_verify")
int32_t dtee_raw_ed25519_verify(const void *public_key, const void *message, int32_t message_len,
                                const void *signature);

#undef DTEE__IMPORT

/* ---------------------------------------------------------------------------------------------
 * Helpers
 * ------------------------------------------------------------------------------------------- */

/* dtee_strlen: the length of a NUL-terminated string (there is no libc). */
static inline size_t dtee_strlen(const char *s) {
    size_t n = 0;
    while (s[n] != '\0') {
        n++;
    }
    return n;
}

/* dtee_buffer: the index of the job buffer called name, or -1 (DTEE_ERR_BAD_INDEX) if the job has
 * none. Pass the index to the other buffer helpers. */
static inline int32_t dtee_buffer(const char *name) {
    return dtee_raw_buffer_find(name, (int32_t)dtee_strlen(name));
}

/* dtee_buffer_len: a buffer's length (inputs, readable state) or capacity (outputs, write_only
 * and append_only state) in bytes; -1 for a bad index. */
static inline int64_t dtee_buffer_len(int32_t buffer) {
    return dtee_raw_buffer_len(buffer);
}

/*
 * dtee_read: reads up to len bytes of the buffer, starting at offset, into dst, and returns how
 * many it read: len, or fewer when the buffer ends first (0 when offset is exactly the end).
 * Returns a negative DTEE_ERR_* code on error (bad index, buffer not readable, offset past the
 * end). Lengths above DTEE_MAX_IO_CHUNK are read in several host calls.
 */
static inline int64_t dtee_read(int32_t buffer, uint64_t offset, void *dst, size_t len) {
    unsigned char *p = (unsigned char *)dst;
    int64_t total = 0;
    if (offset > (uint64_t)INT64_MAX) {
        return DTEE_ERR_RANGE;
    }
    do {
        size_t want = len < DTEE_MAX_IO_CHUNK ? len : DTEE_MAX_IO_CHUNK;
        int32_t got = dtee_raw_buffer_read(buffer, (int64_t)offset, p, (int32_t)want);
        if (got < 0) {
            return got;
        }
        total += got;
        if ((size_t)got < want) {
            break; /* the buffer ended */
        }
        p += got;
        offset += (uint64_t)got;
        len -= (size_t)got;
    } while (len > 0);
    return total;
}

/*
 * dtee_write: writes len bytes from src into the buffer at offset. Returns 0 on success, or a
 * negative DTEE_ERR_* code (bad index, buffer not writable). Writing past the buffer's capacity
 * or the job's output limit traps (output_limit_exceeded); it does not return. A zero-length
 * write is passed to the host as it is. Lengths above DTEE_MAX_IO_CHUNK are written in several
 * host calls.
 */
static inline int32_t dtee_write(int32_t buffer, uint64_t offset, const void *src, size_t len) {
    const unsigned char *p = (const unsigned char *)src;
    if (offset > (uint64_t)INT64_MAX) {
        return DTEE_ERR_RANGE;
    }
    do {
        size_t piece = len < DTEE_MAX_IO_CHUNK ? len : DTEE_MAX_IO_CHUNK;
        int32_t put = dtee_raw_buffer_write(buffer, (int64_t)offset, p, (int32_t)piece);
        if (put < 0) {
            return put;
        }
        p += piece;
        offset += (uint64_t)piece;
        len -= piece;
    } while (len > 0);
    return 0;
}

/* dtee_param: the index of the scalar parameter called name, or -1 if the job has none. */
static inline int32_t dtee_param(const char *name) {
    return dtee_raw_param_find(name, (int32_t)dtee_strlen(name));
}

/* dtee_has_param: whether the job has a scalar parameter called name. */
static inline int dtee_has_param(const char *name) {
    return dtee_param(name) >= 0;
}

/*
 * dtee_param_f64, dtee_param_f32, dtee_param_i64, dtee_param_u64, dtee_param_i32,
 * dtee_param_u32: the value of the scalar parameter called name, converted to the C type.
 * A missing parameter TRAPS (kernel_trapped): check with dtee_has_param first when a parameter is
 * optional. The float getters read the value as a double (f32 rounds it to nearest); the integer
 * getters read it as a 64-bit integer (a float parameter truncated toward zero) and then convert
 * it as C does (the 32-bit and unsigned ones keep the low bits). The host has already checked
 * that a parameter's value fits the type the job declares for it.
 */
static inline double dtee_param_f64(const char *name) {
    return dtee_raw_param_f64(dtee_param(name));
}

static inline float dtee_param_f32(const char *name) {
    return (float)dtee_raw_param_f64(dtee_param(name));
}

static inline int64_t dtee_param_i64(const char *name) {
    return dtee_raw_param_i64(dtee_param(name));
}

static inline uint64_t dtee_param_u64(const char *name) {
    return (uint64_t)dtee_raw_param_i64(dtee_param(name));
}

static inline int32_t dtee_param_i32(const char *name) {
    return (int32_t)dtee_raw_param_i64(dtee_param(name));
}

static inline uint32_t dtee_param_u32(const char *name) {
    return (uint32_t)dtee_raw_param_i64(dtee_param(name));
}

/* ---------------------------------------------------------------------------------------------
 * Memory
 * ------------------------------------------------------------------------------------------- */

/* The first byte after the module's static data and stack, placed by the linker. */
extern unsigned char __heap_base;

/* The allocator's next free address; 0 until the first dtee_alloc. One per module (weak). */
extern uintptr_t dtee__heap_next;
__attribute__((weak)) uintptr_t dtee__heap_next;

/* The alignment of every block dtee_alloc returns. */
#define DTEE_ALLOC_ALIGN 16u

/*
 * dtee_alloc: a bump allocator. Returns size bytes aligned to DTEE_ALLOC_ALIGN, growing linear
 * memory (__builtin_wasm_memory_grow) as needed, or NULL when memory cannot grow that far (past
 * the 4 GiB wasm32 address space, or a declined memory.grow). Under dtee, growing past the job's
 * memory limit normally traps instead (memory_limit_exceeded), so a kernel need not plan for NULL
 * there; it must still check for NULL. Memory is never freed and never reused, so every block
 * starts zero-filled. dtee_alloc(0) returns a valid pointer to zero bytes (which may equal
 * the next block's address).
 */
static inline void *dtee_alloc(size_t size) {
    uint64_t start = dtee__heap_next != 0 ? (uint64_t)dtee__heap_next : (uint64_t)(uintptr_t)&__heap_base;
    start = (start + (DTEE_ALLOC_ALIGN - 1)) & ~(uint64_t)(DTEE_ALLOC_ALIGN - 1);
    uint64_t end = start + (uint64_t)size;
    /* Stop one byte short of 4 GiB, so that end still fits in the 32-bit dtee__heap_next. */
    if (end >= ((uint64_t)1 << 32)) {
        return NULL;
    }
    uint64_t have = (uint64_t)__builtin_wasm_memory_size(0) << 16;
    if (end > have) {
        uint64_t pages = (end - have + 65535u) >> 16;
        if (__builtin_wasm_memory_grow(0, (size_t)pages) == (size_t)-1) {
            return NULL;
        }
    }
    dtee__heap_next = (uintptr_t)end;
    return (void *)(uintptr_t)start;
}

/*
 * dtee_read_all: reads the whole of a readable buffer into a fresh block from dtee_alloc. Returns
 * the block and stores the length in *len_out (which may be NULL), or returns NULL for a bad
 * index, a buffer that cannot be read, a buffer too large for wasm32 memory, or a failed
 * allocation. An empty buffer gives a valid pointer and length 0.
 */
static inline void *dtee_read_all(int32_t buffer, size_t *len_out) {
    int64_t len = dtee_raw_buffer_len(buffer);
    if (len < 0 || (uint64_t)len > (uint64_t)SIZE_MAX) {
        return NULL;
    }
    uintptr_t heap_before = dtee__heap_next;
    void *dst = dtee_alloc((size_t)len);
    if (dst == NULL) {
        return NULL;
    }
    int64_t got = dtee_read(buffer, 0, dst, (size_t)len);
    if (got != len) {
        /* Give the block back: an output's capacity can be large, and nothing else used it. The
         * memory is dirty only if the host wrote some of it, so zero what it may have written. */
        if (got > 0) {
            memset(dst, 0, (size_t)got);
        }
        dtee__heap_next = heap_before;
        return NULL;
    }
    if (len_out != NULL) {
        *len_out = (size_t)len;
    }
    return dst;
}

/* ---------------------------------------------------------------------------------------------
 * memcpy, memset, memmove, memcmp
 *
 * clang emits calls to these even with -nostdlib -ffreestanding (struct copies, zeroing, and
 * __builtin_memcpy), so every kernel needs them. These are simple byte loops, defined weak so a
 * kernel may bring faster ones. no_builtin keeps clang from turning the loops back into calls to
 * themselves.
 * ------------------------------------------------------------------------------------------- */

__attribute__((weak, no_builtin)) void *memcpy(void *__restrict dst, const void *__restrict src, size_t n) {
    unsigned char *d = (unsigned char *)dst;
    const unsigned char *s = (const unsigned char *)src;
    for (size_t i = 0; i < n; i++) {
        d[i] = s[i];
    }
    return dst;
}

__attribute__((weak, no_builtin)) void *memset(void *dst, int c, size_t n) {
    unsigned char *d = (unsigned char *)dst;
    for (size_t i = 0; i < n; i++) {
        d[i] = (unsigned char)c;
    }
    return dst;
}

__attribute__((weak, no_builtin)) void *memmove(void *dst, const void *src, size_t n) {
    unsigned char *d = (unsigned char *)dst;
    const unsigned char *s = (const unsigned char *)src;
    if (d < s) {
        for (size_t i = 0; i < n; i++) {
            d[i] = s[i];
        }
    } else if (d > s) {
        for (size_t i = n; i > 0; i--) {
            d[i - 1] = s[i - 1];
        }
    }
    return dst;
}

__attribute__((weak, no_builtin)) int memcmp(const void *a, const void *b, size_t n) {
    const unsigned char *x = (const unsigned char *)a;
    const unsigned char *y = (const unsigned char *)b;
    for (size_t i = 0; i < n; i++) {
        if (x[i] != y[i]) {
            return x[i] < y[i] ? -1 : 1;
        }
    }
    return 0;
}

#ifdef __cplusplus
}
#endif

#endif /* DTEE_KERNEL_H */
