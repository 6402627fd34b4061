;; append: appends the bytes of input "item" to the append_only state buffer "log".
;;
;; Entry: "append", () -> i32.
;; Buffers: input "item" (any length); state "log" (mode append_only). The bytes of "item" are
;;          written at offset 0 of the part this job appends, in 64 KiB chunks. An empty "item"
;;          appends nothing. Appending more than "log"'s max_size traps (output_limit_exceeded).
;; Params: none.
;; Returns: 0 on success; 1 if "item" is missing; 2 if "log" is missing; 3 if a read or write
;;          fails (for example "log" is read_only).
(module
  (import "dtee" "buffer_find" (func $buffer_find (param i32 i32) (result i32)))
  (import "dtee" "buffer_len" (func $buffer_len (param i32) (result i64)))
  (import "dtee" "buffer_read" (func $buffer_read (param i32 i64 i32 i32) (result i32)))
  (import "dtee" "buffer_write" (func $buffer_write (param i32 i64 i32 i32) (result i32)))

  (memory (export "memory") 2)
  (data (i32.const 0) "item")
  (data (i32.const 16) "log")

  ;; The chunk: 64 KiB at address 65536.
  (global $chunk i32 (i32.const 65536))
  (global $chunk_len i32 (i32.const 65536))

  (func (export "append") (result i32)
    (local $item i32) (local $log i32) (local $total i64) (local $offset i64) (local $got i32)
    (local.set $item (call $buffer_find (i32.const 0) (i32.const 4)))
    (if (i32.lt_s (local.get $item) (i32.const 0)) (then (return (i32.const 1))))
    (local.set $log (call $buffer_find (i32.const 16) (i32.const 3)))
    (if (i32.lt_s (local.get $log) (i32.const 0)) (then (return (i32.const 2))))
    (local.set $total (call $buffer_len (local.get $item)))
    (if (i64.lt_s (local.get $total) (i64.const 0)) (then (return (i32.const 3))))
    (block $done
      (loop $copy
        (br_if $done (i64.ge_u (local.get $offset) (local.get $total)))
        (local.set $got
          (call $buffer_read (local.get $item) (local.get $offset) (global.get $chunk) (global.get $chunk_len)))
        (if (i32.le_s (local.get $got) (i32.const 0)) (then (return (i32.const 3))))
        (if (i32.ne
              (call $buffer_write (local.get $log) (local.get $offset) (global.get $chunk) (local.get $got))
              (local.get $got))
          (then (return (i32.const 3))))
        (local.set $offset (i64.add (local.get $offset) (i64.extend_i32_u (local.get $got))))
        (br $copy)))
    (i32.const 0)))
