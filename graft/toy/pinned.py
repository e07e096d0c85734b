"""The toy world is trained in a child process whose floating-point path is pinned, so that x86 machines build the
same world, bit for bit, whatever their thread count and SIMD width.

Weights after thousands of optimiser steps carry every rounding on the way, and two things change the rounding from
one machine to the next: the number of threads (ATen and MKL split reductions between them) and the SIMD width
each library picks for the CPU (ATen's kernels, MKL's GEMM, oneDNN's convolutions: AVX-512 or AVX2 sum in different
orders). A process cannot change them once torch is loaded, so the build runs in a fresh interpreter whose
environment fixes them before torch starts: one thread, ATen's AVX2 kernels, MKL's AVX2 branch under its
Conditional Numerical Reproducibility mode, oneDNN capped at AVX2 and off for convolutions. On a CPU without AVX2
(few x86 CPUs sold since about 2015) ATen and MKL fall back to their baseline kernels and the world differs in
its last bits; the margins of the figures and tests carry that (docs/toy-world.md, "The same world everywhere").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MKL_DYNAMIC": "FALSE"}


BASELINE = "GRAFT_TOY_BASELINE_KERNELS"  # set to 1: build as a CPU without AVX2 would (to check the margins)


def pinned_env() -> dict[str, str]:
    """The environment variables that pin the float path on this CPU: AVX2 where the CPU has it (ATen would crash
    on AVX2 kernels where it has not, so those CPUs get the baseline kernels and MKL's compatible branch).
    $GRAFT_TOY_BASELINE_KERNELS=1 takes the baseline path on any CPU, so one machine can show what another builds."""
    import torch

    avx2 = bool(getattr(torch.cpu, "_is_avx2_supported", lambda: False)()) and os.environ.get(BASELINE) != "1"
    return {**THREADS, "MKL_CBWR": "AVX2" if avx2 else "COMPATIBLE", "ATEN_CPU_CAPABILITY": "avx2" if avx2 else
            "default", "ONEDNN_MAX_CPU_ISA": "AVX2" if avx2 else "DEFAULT"}


FIGURES = "figures.json"  # what the child reports (per-stage losses, seconds), read back by the parent


def run_pinned(spec_fields: Mapping, staging: Path, say: Callable[[str], None],
               environ: Mapping[str, str] | None = None) -> dict:
    """Build the world of `spec_fields` (a WorldSpec as a dict) into `staging` in a pinned child process, forwarding
    its progress lines to `say`; returns its figures. `environ` replaces the inherited environment (tests)."""
    import graft
    from graft.errors import GraftError

    env = dict(os.environ if environ is None else environ)
    env.update(pinned_env())
    # The child imports the very graft this process runs (a checkout on sys.path, not an installed copy).
    source = str(Path(graft.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([source, *filter(None, [env.get("PYTHONPATH")])])
    cmd = [sys.executable, "-m", "graft.toy.pinned_child", json.dumps(dict(spec_fields)), str(staging)]
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as child:
        assert child.stdout is not None and child.stderr is not None
        for line in child.stdout:
            say(line.rstrip("\n"))
        errors = child.stderr.read()
    if child.returncode != 0:
        last = next((ln for ln in reversed(errors.splitlines()) if ln.strip()), f"exit status {child.returncode}")
        error = GraftError(f"the toy world's build failed: {last}")
        error.exit_code = child.returncode if 2 <= child.returncode <= 5 else 1
        raise error
    report = staging / FIGURES
    figures = json.loads(report.read_text())
    report.unlink()
    return figures
