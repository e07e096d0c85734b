"""The arithmetic of grafting, as pure tensor functions shared by the streamed merge and the resident graft.

Both paths must produce bit-identical weights for the same recipe, so the operation order is fixed here once:
θ' = θ + (τ·λ), each step rounded in fp32, then one cast to the target dtype. Two separate rounded operations
(no fused multiply-add) keep CPU, CUDA and an independent NumPy reference in exact agreement.
"""

from __future__ import annotations

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
    """Whether every element is finite, exactly, in one vectorised pass with no temporary of the tensor's size: the
    smallest and largest element (`aminmax`, which propagates NaN) are both finite exactly when every element is.
    `torch.isfinite(x).all()` builds a bool tensor and then reduces it, with no vectorised kernel for bf16/fp16 on a
    CPU: run three times per chunk, it was most of a merge's time (docs/performance.md)."""
    if not values.is_floating_point() or values.numel() == 0:
        return True
    if values.dtype.itemsize == 1:  # torch has neither aminmax nor isfinite for fp8: widen it (exactly)
        values = values.to(torch.float32)
    return bool(torch.isfinite(torch.stack(torch.aminmax(values.reshape(-1)))).all())
