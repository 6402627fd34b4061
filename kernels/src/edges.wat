;; edges: edge cases of the host ABI, for the worker's backend tests.
;;
;; Entry "refill", () -> i32: writes 1024 bytes to buffer "a", shrinks "a" to 0 with
;;   buffer_set_len, then writes 1 byte to buffer "b". Shrinking gives no output bytes back, so
;;   with an output limit of 1024 the last write traps (output_limit_exceeded).
;;   Returns 0 if every call returned; 1 if "a" or "b" is missing; 2 if a call failed.
;; Entry "find_high", () -> i32: calls buffer_find with a name pointer of 2^31 (past linear
;;   memory), which traps (kernel_trapped). Returns 0 if it did not trap.
;; Entry "sha256_memory", () -> i32: the sha256 host primitive over the 3 bytes "abc" of linear
;;   memory, the digest written to buffer "a" (32 bytes). Returns 0, or 2 if a call failed.
;; Entry "sha256_high", () -> i32: the sha256 host primitive with a destination of 2^32 - 16
;;   (past linear memory), which traps (kernel_trapped). Returns 0 if it did not trap.
;; Params: none.
(module
  (import "dtee" "buffer_find" (func $buffer_find (param i32 i32) (result i32)))
  (import "dtee" "buffer_write" (func $buffer_write (param i32 i64 i32 i32) (result i32)))
  (import "dtee" "buffer_set_len" (func $buffer_set_len (param i32 i64) (result i32)))
  (import "dtee" "sha256" (func $sha256 (param i32 i32 i32) (result i32)))

  (memory (export "memory") 1)
  (data (i32.const 0) "a")
  (data (i32.const 16) "b")
  (data (i32.const 32) "abc")

  (func (export "refill") (result i32)
    (local $a i32) (local $b i32)
    (local.set $a (call $buffer_find (i32.const 0) (i32.const 1)))
    (local.set $b (call $buffer_find (i32.const 16) (i32.const 1)))
    (if (i32.or (i32.lt_s (local.get $a) (i32.const 0)) (i32.lt_s (local.get $b) (i32.const 0)))
      (then (return (i32.const 1))))
    (if (i32.ne (call $buffer_write (local.get $a) (i64.const 0) (i32.const 1024) (i32.const 1024))
                (i32.const 1024))
      (then (return (i32.const 2))))
    (if (call $buffer_set_len (local.get $a) (i64.const 0)) (then (return (i32.const 2))))
    (if (i32.ne (call $buffer_write (local.get $b) (i64.const 0) (i32.const 1024) (i32.const 1))
                (i32.const 1))
      (then (return (i32.const 2))))
    (i32.const 0))

  (func (export "find_high") (result i32)
    (drop (call $buffer_find (i32.const 0x80000000) (i32.const 4)))
    (i32.const 0))

  (func (export "sha256_memory") (result i32)
    (local $a i32)
    (local.set $a (call $buffer_find (i32.const 0) (i32.const 1)))
    (if (call $sha256 (i32.const 32) (i32.const 3) (i32.const 64)) (then (return (i32.const 2))))
    (if (i32.ne (call $buffer_write (local.get $a) (i64.const 0) (i32.const 64) (i32.const 32))
                (i32.const 32))
      (then (return (i32.const 2))))
    (i32.const 0))

  (func (export "sha256_high") (result i32)
    (drop (call $sha256 (i32.const 32) (i32.const 3) (i32.const 0xfffffff0)))
    (i32.const 0)))
