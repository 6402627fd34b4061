;; badimport: imports a function the host does not provide, for testing kernel_link_failed.
;;
;; Entry: "run", () -> i32; never runs, since instantiation fails on the import
;;        "env" "launch_missiles". Buffers: none. Params: none.
;; Everything else is as a good kernel has it (memory exported, entry present), so the import is
;; the only reason linking fails.
(module
  (import "env" "launch_missiles" (func $launch_missiles (result i32)))

  (memory (export "memory") 1)

  (func (export "run") (result i32)
    (call $launch_missiles)))
