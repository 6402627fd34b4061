;; echo: copies input "in" to output "out"; noop: does nothing.
;;
;; Entries:
;;   "echo", () -> i32: copies every byte of input "in" to output "out", in 64 KiB chunks, so
;;           "out" ends up exactly as long as "in" (an empty "in" leaves "out" empty). An "in"
;;           longer than "out"'s capacity traps on the write (output_limit_exceeded).
;;           Returns 0 on success, 1 if "in" is missing, 2 if "out" is missing, 3 if a read or
;;           write fails (for example "in" is not readable or "out" not writable).
;;   "noop", () -> i32: returns 0 at once without touching any buffer (for measuring the
;;           host's per-job overhead).
;; Buffers: input "in", output "out" ("echo" only). Params: none.
;;
;; Memory: two 64 KiB pages; the buffer names live in the first, the second is the chunk.
(module
  (import "dtee" "buffer_find" (func $buffer_find (param i32 i32) (result i32)))
  (import "dtee" "buffer_len" (func $buffer_len (param i32) (result i64)))
  (import "dtee" "buffer_read" (func $buffer_read (param i32 i64 i32 i32) (result i32)))
  (import "dtee" "buffer_write" (func $buffer_write (param i32 i64 i32 i32) (result i32)))

  (memory (export "memory") 2)
  (data (i32.const 0) "in")
  (data (i32.const 16) "out")

  ;; The chunk: 64 KiB at address 65536.
  (global $chunk i32 (i32.const 65536))
  (global $chunk_len i32 (i32.const 65536))

  (func (export "echo") (result i32)
    (local $in i32) (local $out i32) (local $total i64) (local $offset i64) (local $got i32)
    (local.set $in (call $buffer_find (i32.const 0) (i32.const 2)))
    (if (i32.lt_s (local.get $in) (i32.const 0)) (then (return (i32.const 1))))
    (local.set $out (call $buffer_find (i32.const 16) (i32.const 3)))
    (if (i32.lt_s (local.get $out) (i32.const 0)) (then (return (i32.const 2))))
    (local.set $total (call $buffer_len (local.get $in)))
    (if (i64.lt_s (local.get $total) (i64.const 0)) (then (return (i32.const 3))))
    (block $done
      (loop $copy
        (br_if $done (i64.ge_u (local.get $offset) (local.get $total)))
        (local.set $got
          (call $buffer_read (local.get $in) (local.get $offset) (global.get $chunk) (global.get $chunk_len)))
        ;; A read that fails, or gives nothing before the end, is an error.
        (if (i32.le_s (local.get $got) (i32.const 0)) (then (return (i32.const 3))))
        (if (i32.ne
              (call $buffer_write (local.get $out) (local.get $offset) (global.get $chunk) (local.get $got))
              (local.get $got))
          (then (return (i32.const 3))))
        (local.set $offset (i64.add (local.get $offset) (i64.extend_i32_u (local.get $got))))
        (br $copy)))
    (i32.const 0))

  (func (export "noop") (result i32)
    (i32.const 0)))
