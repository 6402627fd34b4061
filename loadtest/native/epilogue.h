/* Zero-filled, never freed within a run (the harness frees nothing: runs are short). */
static inline void *dtee_alloc(size_t size) { return calloc(size ? size : 1, 1); }

static inline void *dtee_read_all(int32_t buffer, size_t *len_out) {
    int64_t len = dtee_raw_buffer_len(buffer);
    if (len < 0) return NULL;
    void *dst = dtee_alloc((size_t)len);
    if (dst == NULL || dtee_read(buffer, 0, dst, (size_t)len) != len) return NULL;
    if (len_out != NULL) *len_out = (size_t)len;
    return dst;
}

#endif
