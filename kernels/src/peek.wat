;; peek: writes what its linear memory holds, without storing anything there first, for testing
;; that a kernel never sees what an earlier run (of any kernel, any tenant) left in memory.
;;
;; Entry: "peek", () -> i32: writes bytes 65536 to 131071 of linear memory (the second page,
;;        where echo's chunk lives) to output "out", as they are. Returns 0 on success, 2 if
;;        "out" is missing, 3 if the write fails.
;; Buffers: output "out" (64 KiB). Params: none.
(module
  (import "dtee" "buffer_find" (func $buffer_find (param i32 i32) (result i32)))
  (import "dtee" "buffer_write" (func $buffer_write (param i32 i64 i32 i32) (result i32)))

  (memory (export "memory") 2)
  (data (i32.const 16) "out")

  (func (export "peek") (result i32)
    (local $out i32)
    (local.set $out (call $buffer_find (i32.const 16) (i32.const 3)))
    (if (i32.lt_s (local.get $out) (i32.const 0)) (then (return (i32.const 2))))
    (if (i32.ne
          (call $buffer_write (local.get $out) (i64.const 0) (i32.const 65536) (i32.const 65536))
          (i32.const 65536))
      (then (return (i32.const 3))))
    (i32.const 0)))
