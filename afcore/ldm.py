"""Latent diffusion pieces for AF-LDM (taught in notebooks/30_af_ldm.py).

So far: the U-Net equivariance loss of AF-LDM (REFERENCE.md "Equivariance loss (U-Net)").
Same timestep for both passes; the noisy latent is shifted circularly by a multiple of 1/8 latent
pixel (|d| <= 0.375 of the size); the shifted pass uses equivariant attention whose keys/values come
from the unshifted pass; the squared error is averaged over the valid mask only.
"""
from __future__ import annotations

import torch

from afcore.attention import EquivariantAttention
from afcore.signal import fourier_shift, valid_mask

__all__ = ["sample_latent_shift", "equivariance_loss"]


def sample_latent_shift(size, generator=None, max_frac: float = 0.375, step: float = 1 / 8):
    """Random (dy, dx) in latent pixels: multiples of ``step`` with |d| <= max_frac * size."""
    if not 0 <= max_frac < 1:
        raise ValueError(f"max_frac must be in [0, 1), got {max_frac}")
    out = []
    for n in size:
        k = int(max_frac * n / step)
        out.append(step * int(torch.randint(-k, k + 1, (1,), generator=generator)))
    return tuple(out)


def equivariance_loss(unet, x_t, t, d, stop_grad: bool = True, cfa: bool = True):
    """Masked MSE between unet(T_d x_t) and T_d unet(x_t); returns (loss, mask).

    ``unet(x, t)`` must return an object with ``.sample`` (diffusers). ``cfa=True`` anchors the
    shifted pass's attention on the unshifted pass (cross-frame attention).
    """
    with EquivariantAttention(unet, detach=stop_grad) as eq:
        eq.record() if cfa else eq.off()
        ref = unet(x_t, t).sample
        if cfa:
            eq.use()
        out = unet(fourier_shift(x_t, d), t).sample
    target = fourier_shift(ref.detach() if stop_grad else ref, d)
    mask = valid_mask(x_t.shape[-2:], d, device=x_t.device).to(x_t.dtype)
    err = (out - target) ** 2 * mask
    return err.sum() / (mask.sum() * x_t.shape[0] * x_t.shape[1]).clamp_min(1), mask
