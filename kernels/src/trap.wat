;; trap: executes unreachable at once, for testing kernel_trapped.
;;
;; Entry: "boom", () -> i32; always traps. Buffers: none. Params: none. Imports: none.
(module
  (memory (export "memory") 1)

  (func (export "boom") (result i32)
    (unreachable)))
