;; spin: loops forever, for testing the fuel limit (fuel_exhausted) and the wall-clock deadline
;; (execution_timeout).
;;
;; Entry: "spin", () -> i32; never returns. Buffers: none. Params: none. Imports: none.
(module
  (memory (export "memory") 1)

  (func (export "spin") (result i32)
    (local $i i64)
    (loop $forever
      (local.set $i (i64.add (local.get $i) (i64.const 1)))
      (br $forever))
    (i32.const 0)))
