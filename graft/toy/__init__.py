"""The toy world: a tiny base / aligned / medical-VLM trio trained on a CPU (graft.toy.world), and `graft demo` on
it (graft.toy.demo)."""
