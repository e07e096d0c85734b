"""The arithmetic of grafting, as pure tensor functions shared by the streamed merge and the resident graft.

Both paths must produce bit-identical weights for the same recipe, so the operation order is fixed here once:
θ' = θ + (τ·λ), each step rounded in fp32, then one cast to the target dtype. Two separate rounded operations
(no fused multiply-add) keep CPU, CUDA and an independent NumPy reference in exact agreement.
"""

from __future__ import annotations

import math

import torch


def graft_rows(theta: torch.Tensor, tau: torch.Tensor, lam: float, out_dtype: torch.dtype) -> torch.Tensor:
    """θ + λ·τ computed in fp32, cast once to `out_dtype`."""
    update = tau.to(torch.float32, copy=True).mul_(lam)
    return update.add_(theta.to(torch.float32)).to(out_dtype)


def orthogonal_tau(theta: torch.Tensor, tau: torch.Tensor, theta_origin: torch.Tensor, coeff: float) -> torch.Tensor:
    """τ − c·τ_med in fp32: the projected τ, which the resident graft computes once and then grafts per trial."""
    tau_med = theta.to(torch.float32) - theta_origin.to(torch.float32)
    return tau.to(torch.float32, copy=True).sub_(tau_med.mul_(coeff))


def projection_terms(theta: torch.Tensor, tau: torch.Tensor, theta_origin: torch.Tensor) -> tuple[float, float]:
    """(⟨τ, τ_med⟩, ⟨τ_med, τ_med⟩) for one chunk, accumulated in fp64 so chunking does not change the result."""
    tau_med = theta.to(torch.float64) - theta_origin.to(torch.float64)
    return float((tau.to(torch.float64) * tau_med).sum()), float(tau_med.square().sum())


def projection_coefficient(dot: float, sq_norm: float) -> float:
    """c = ⟨τ, τ_med⟩ / ⟨τ_med, τ_med⟩, or 0 when the medical fine-tune left the tensor unchanged."""
    return dot / sq_norm if sq_norm > 0 else 0.0


def all_finite(values: torch.Tensor) -> bool:
    """Whether every element is finite, exactly. A non-finite element makes the sum non-finite (NaN and ±inf survive
    every addition), so one summing pass, with no temporary, answers for the common case: a sum of finite values
    that is itself finite. Only when the sum is not (a NaN or inf somewhere, or finite values overflowing the sum)
    is the exact elementwise test run. `torch.isfinite(x).all()` costs 15–50× the sum on a CPU (a bool tensor, then
    a reduction, with no vectorized kernel for bf16/fp16), which made it most of a merge's time."""
    if not values.is_floating_point():
        return True
    accumulate = torch.float64 if values.dtype == torch.float64 else torch.float32
    if math.isfinite(float(values.sum(dtype=accumulate))):
        return True
    exact = values if values.dtype.itemsize > 1 else values.to(torch.float32)  # torch has no isfinite for fp8
    return bool(torch.isfinite(exact).all())
