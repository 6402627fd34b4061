;; tee: copies the bytes of input "item" to the buffers "first" and "second" (state or output),
;; for testing commits that write two bindings.
;;
;; Entry: "tee", () -> i32.
;; Buffers: input "item" (at most 64 KiB); "first" and "second" (writable: output, or state in
;;          any writable mode). The bytes of "item" are written at offset 0 of each.
;; Params: none.
;; Returns: 0 on success; 1 if "item" is missing; 2 if "first" or "second" is missing; 3 if a
;;          read or write fails.
(module
  (import "dtee" "buffer_find" (func $buffer_find (param i32 i32) (result i32)))
  (import "dtee" "buffer_read" (func $buffer_read (param i32 i64 i32 i32) (result i32)))
  (import "dtee" "buffer_write" (func $buffer_write (param i32 i64 i32 i32) (result i32)))

  (memory (export "memory") 2)
  (data (i32.const 0) "item")
  (data (i32.const 16) "first")
  (data (i32.const 32) "second")

  (func $write (param $buffer i32) (param $len i32) (result i32)
    (if (i32.lt_s (local.get $buffer) (i32.const 0)) (then (return (i32.const 2))))
    (if (i32.ne
          (call $buffer_write (local.get $buffer) (i64.const 0) (i32.const 65536) (local.get $len))
          (local.get $len))
      (then (return (i32.const 3))))
    (i32.const 0))

  (func (export "tee") (result i32)
    (local $item i32) (local $len i32) (local $status i32)
    (local.set $item (call $buffer_find (i32.const 0) (i32.const 4)))
    (if (i32.lt_s (local.get $item) (i32.const 0)) (then (return (i32.const 1))))
    (local.set $len
      (call $buffer_read (local.get $item) (i64.const 0) (i32.const 65536) (i32.const 65536)))
    (if (i32.lt_s (local.get $len) (i32.const 0)) (then (return (i32.const 3))))
    (local.set $status (call $write (call $buffer_find (i32.const 16) (i32.const 5)) (local.get $len)))
    (if (local.get $status) (then (return (local.get $status))))
    (call $write (call $buffer_find (i32.const 32) (i32.const 6)) (local.get $len))))
