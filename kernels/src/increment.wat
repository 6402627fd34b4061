;; increment: adds one to a little-endian u64 counter kept in state.
;;
;; Entry: "increment", () -> i32.
;; Buffers: state "counter" (mode read_write; may_be_absent is fine), holding 8 bytes, a u64
;;          little-endian. An absent or empty value counts as 0. The kernel writes counter + 1
;;          (wrapping at 2^64) as 8 bytes at offset 0.
;; Params: none.
;; Returns: 0 on success; 1 if "counter" is missing; 2 if its value is neither empty nor exactly
;;          8 bytes; 3 if the read or write fails (for example the mode is read_only).
(module
  (import "dtee" "buffer_find" (func $buffer_find (param i32 i32) (result i32)))
  (import "dtee" "buffer_len" (func $buffer_len (param i32) (result i64)))
  (import "dtee" "buffer_read" (func $buffer_read (param i32 i64 i32 i32) (result i32)))
  (import "dtee" "buffer_write" (func $buffer_write (param i32 i64 i32 i32) (result i32)))

  (memory (export "memory") 1)
  (data (i32.const 0) "counter")
  ;; The counter's 8 bytes live at address 16.

  (func (export "increment") (result i32)
    (local $counter i32) (local $len i64)
    (local.set $counter (call $buffer_find (i32.const 0) (i32.const 7)))
    (if (i32.lt_s (local.get $counter) (i32.const 0)) (then (return (i32.const 1))))
    (local.set $len (call $buffer_len (local.get $counter)))
    (if (i64.eq (local.get $len) (i64.const 8))
      (then
        (if (i32.ne (call $buffer_read (local.get $counter) (i64.const 0) (i32.const 16) (i32.const 8))
                    (i32.const 8))
          (then (return (i32.const 3)))))
      (else
        (if (i64.ne (local.get $len) (i64.const 0))
          (then (return (i32.const 2))))
        (i64.store (i32.const 16) (i64.const 0))))
    (i64.store (i32.const 16) (i64.add (i64.load (i32.const 16)) (i64.const 1)))
    (if (i32.ne (call $buffer_write (local.get $counter) (i64.const 0) (i32.const 16) (i32.const 8))
                (i32.const 8))
      (then (return (i32.const 3))))
    (i32.const 0)))
