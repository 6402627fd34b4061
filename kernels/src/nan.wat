;; nan: what a float operation's NaN looks like, for the wasm profiles' tests.
;;
;; Entries:
;;   "nan", () -> i32: divides 0.0 by 0.0 (f32, operands loaded from memory so that no compiler
;;          folds the division) and writes the quotient's 4 bytes (little-endian) to output
;;          "out". The deterministic profile canonicalises it to 0x7fc00000; the fast profile
;;          keeps what the host CPU makes (0xffc00000 on x86-64). Returns 0, or 1 when "out" is
;;          missing or the write fails.
;; Buffers: output "out" (at least 4 bytes). Params: none.
(module
  (import "dtee" "buffer_find" (func $buffer_find (param i32 i32) (result i32)))
  (import "dtee" "buffer_write" (func $buffer_write (param i32 i64 i32 i32) (result i32)))

  (memory (export "memory") 1)
  (data (i32.const 0) "out")

  (func (export "nan") (result i32)
    (local $out i32)
    (local.set $out (call $buffer_find (i32.const 0) (i32.const 3)))
    (if (i32.lt_s (local.get $out) (i32.const 0)) (then (return (i32.const 1))))
    ;; Addresses 32 and 36 hold zeros (memory starts zeroed).
    (f32.store (i32.const 64)
      (f32.div (f32.load (i32.const 32)) (f32.load (i32.const 36))))
    (if (i32.ne (call $buffer_write (local.get $out) (i64.const 0) (i32.const 64) (i32.const 4))
                (i32.const 4))
      (then (return (i32.const 1))))
    (i32.const 0))
)
