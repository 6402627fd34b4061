;; flood: writes 64 KiB chunks to output "out" at increasing offsets, forever, for testing the
;; output limit (output_limit_exceeded): the write past "out"'s capacity or the job's output limit
;; traps.
;;
;; Entry: "flood", () -> i32; never returns normally.
;; Buffers: output "out". Params: none.
;; Returns: 1 if "out" is missing; 2 if a write fails without trapping (for example "out" is an
;;          input).
;; The chunk is the first 64 KiB page of memory: the bytes "out" followed by zeros.
(module
  (import "dtee" "buffer_find" (func $buffer_find (param i32 i32) (result i32)))
  (import "dtee" "buffer_write" (func $buffer_write (param i32 i64 i32 i32) (result i32)))

  (memory (export "memory") 1)
  (data (i32.const 0) "out")

  (func (export "flood") (result i32)
    (local $out i32) (local $offset i64)
    (local.set $out (call $buffer_find (i32.const 0) (i32.const 3)))
    (if (i32.lt_s (local.get $out) (i32.const 0)) (then (return (i32.const 1))))
    (loop $write
      (if (i32.lt_s (call $buffer_write (local.get $out) (local.get $offset) (i32.const 0) (i32.const 65536))
                    (i32.const 0))
        (then (return (i32.const 2))))
      (local.set $offset (i64.add (local.get $offset) (i64.const 65536)))
      (br $write))
    (i32.const 0)))
