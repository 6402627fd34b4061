;; membomb: grows linear memory by 16 pages (1 MiB) at a time, forever, for testing the memory
;; limit (memory_limit_exceeded). If memory.grow ever returns -1 instead of trapping, the kernel
;; executes unreachable, so it never ends normally.
;;
;; Entry: "bomb", () -> i32; never returns. Buffers: none. Params: none. Imports: none.
;; The memory declares no maximum, so only the host's limit (or the 4 GiB of wasm32) stops it.
(module
  (memory (export "memory") 1)

  (func (export "bomb") (result i32)
    (loop $grow
      (if (i32.eq (memory.grow (i32.const 16)) (i32.const -1))
        (then (unreachable)))
      (br $grow))
    (i32.const 0)))
