;; fail: returns status 7, for testing kernel_failed.
;;
;; Entry: "fail", () -> i32; returns 7 at once. Buffers: none. Params: none. Imports: none.
(module
  (memory (export "memory") 1)

  (func (export "fail") (result i32)
    (i32.const 7)))
