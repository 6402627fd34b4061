;; recurse: calls itself without end, for testing stack exhaustion (the stack overflow traps:
;; kernel_trapped).
;;
;; Entry: "deep", () -> i32; never returns normally. Buffers: none. Params: none. Imports: none.
;; The recursive call is not in tail position (its result is added to), so no engine can turn
;; the recursion into a loop.
(module
  (memory (export "memory") 1)

  (func $deep (export "deep") (result i32)
    (i32.add (call $deep) (i32.const 1))))
