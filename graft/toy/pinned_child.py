"""The child process of a pinned toy-world build (graft.toy.pinned starts it with the float path fixed in its
environment): trains the world of a WorldSpec into a staging folder and reports its figures."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .pinned import FIGURES, pinned_env


def main(argv: list[str]) -> int:
    import torch

    from graft.errors import GraftError

    from .world import ToyWorld, WorldSpec, train_world

    torch.backends.mkldnn.enabled = False  # convolutions through ATen and MKL's pinned GEMM, not oneDNN's JIT
    spec = WorldSpec.from_fields(json.loads(argv[0]))
    staging = Path(argv[1])
    try:
        figures = train_world(ToyWorld.at(staging, spec), lambda m: print(m, flush=True))
    except GraftError as e:
        print(str(e), file=sys.stderr)
        return e.exit_code
    figures["float_path"] = {**{k: os.environ.get(k, "") for k in pinned_env()}, "torch": torch.__version__,
                             "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                             "threads": torch.get_num_threads()}
    (staging / FIGURES).write_text(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
