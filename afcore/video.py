"""Warped Diffusion's video sampler on a small conditional latent model (taught in notebooks/40_noise_warping.py).

- ``degrade_sr``: the x4 super-resolution task's input (area average down by 4, bicubic back up).
- ``sr_unet`` / ``sr_loss``: a latent ``UNet2DModel`` conditioned by channel concatenation on the degraded frame's
  latent, trained with epsilon-prediction on white noise (``noise="indep"``) or on GP noise (``"gp"``, random
  Fourier features; DDIM with epsilon-prediction solves the same probability-flow ODE for any fixed noise covariance,
  so nothing else changes).
- ``sample_video``: frames are sampled one after the other with DDIM from their (warped) noises. With ``guidance``
  (equivariance self-guidance of Warped Diffusion) frame j >= 1 is pulled, at every step, towards agreeing with
  frame j-1: the current x0-prediction is warped onto frame j-1's grid with the forward flow j-1 -> j (bilinear),
  compared with frame j-1's stored x0-prediction at the same step on the in-frame pixels,
  ``r = M (warp(x0_j) - x0_{j-1})``, and the DDIM update is corrected by ``- lambda grad_{x_t} |r|^2 / |r|`` (the
  DPS-style normalisation; ``guidance_norm="none"`` drops the division). The stored prediction of frame j is the
  one *before* its correction. lambda = 0 takes exactly the unguided path's values.
  ``guidance_target="previous"`` (beyond the paper) instead warps frame j-1's stored prediction onto frame j's grid
  with the backward flow j -> j-1 and compares it with the current prediction, ``r = M (x0_j - warp(x0_{j-1}))``.
  Why it exists: a bilinear warp by a fractional offset delta is a low-pass (gain |1 - 2 delta| at Nyquist), so the
  paper's residual can only vanish if x0_j carries *boosted* high frequencies, and the next frame must then match
  that boosted frame: under sub-pixel motion the boost compounds along the chain (notebook 40 measures it). Warping
  the stored target instead never asks for a boost; the price is the opposite drift, a little blur per frame.
- ``warp_errors`` / ``restoration``: the metrics of the stage (warping error against the first and the previous
  frame; PSNR, SSIM, MSE).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from afcore import flow as FL
from afcore.ldm import make_scheduler
from afcore.noise_warp import RFFNoise

# Stable Diffusion's scaled-linear schedule (0.00085..0.012): the schedule Warped Diffusion's latent models use and the
# one this module's guidance step was tuned with; training (notebook 40) and sampling share it
SCHEDULE = "sd"

__all__ = ["degrade_sr", "sr_unet", "sr_loss", "sample_video", "warp_errors", "restoration", "GUIDANCE_TARGETS"]


def degrade_sr(x: torch.Tensor, factor: int = 4) -> torch.Tensor:
    """Area-average down by ``factor``, bicubic back up (the low-resolution input at full size), clipped."""
    h, w = x.shape[-2:]
    low = F.avg_pool2d(x, factor)
    return F.interpolate(low, size=(h, w), mode="bicubic", align_corners=False).clamp(-1, 1)


def sr_unet(channels=(32, 64, 64), latent_channels: int = 4, sample_size: int = 16, groups: int = 8,
            head_dim: int = 32):
    """UNet2DModel(in = 2 x latent channels, out = latent channels): plain blocks at full resolution, attention
    below (and in the mid block)."""
    from diffusers import UNet2DModel

    n = len(channels)
    if n < 2:
        raise ValueError(f"warp_channels needs at least 2 levels, got {list(channels)}")
    return UNet2DModel(sample_size=sample_size, in_channels=2 * latent_channels, out_channels=latent_channels,
                       block_out_channels=tuple(channels), layers_per_block=1,
                       down_block_types=("DownBlock2D",) + ("AttnDownBlock2D",) * (n - 1),
                       up_block_types=("AttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
                       norm_num_groups=groups, attention_head_dim=min(head_dim, min(channels[1:])))


def _noise(shape, kind, generator, device, features, truncation):
    if kind == "indep":
        src = generator.device if generator is not None else device  # a generator on the device: no copy
        return torch.randn(shape, generator=generator, device=src).to(device)
    if kind == "gp":
        b, c, h, w = shape
        # drawn where the generator lives, evaluated on ``device`` (a CPU generator gives the same draws anywhere)
        return RFFNoise(b, c, features=features, truncation=truncation, generator=generator,
                        device=device)(grid_size=(h, w))
    raise ValueError(f"noise must be 'indep' or 'gp', got {kind!r}")


def sr_loss(unet, z0, cond, scheduler, generator, noise: str = "indep", rff_features: int = 1000,
            rff_truncation: float = 2.0):
    """Epsilon MSE of the conditional U-Net on white (``indep``) or GP noise; returns (loss, logs)."""
    src = generator.device if generator is not None else z0.device
    t = torch.randint(0, scheduler.config.num_train_timesteps, (z0.shape[0],), generator=generator,
                      device=src).to(z0.device)
    eps = _noise(z0.shape, noise, generator, z0.device, rff_features, rff_truncation)
    x_t = scheduler.add_noise(z0, eps, t)
    loss = F.mse_loss(unet(torch.cat([x_t, cond], 1), t).sample, eps)
    return loss, {"diffusion": loss.item()}


GUIDANCE_TARGETS = ("current", "previous")


def sample_video(unet, noises: torch.Tensor, conds: torch.Tensor, steps: int = 25, guidance=None,
                 prev_flows: torch.Tensor | None = None, guidance_norm: str = "dps", progress: bool = False,
                 guidance_target: str = "current", back_flows: torch.Tensor | None = None, warp=None):
    """DDIM (eta 0) for every frame: ``noises``, ``conds`` (T, B, C, h, w); returns the final latents (T, B, C, h, w).

    ``guidance``: None (plain sampling) or lambda, a float or a (B,) tensor (one per video), with ``prev_flows``
    (T-1, B, 2, h, w) the forward flows j-1 -> j on the latent grid. ``guidance_target``: "current" (the paper: warp
    the current prediction) or "previous" (warp the stored one; needs ``back_flows``, the flows j -> j-1).
    ``warp``: the warp inside the guidance residual, ``FL.backward_warp`` (bilinear) when None, or a function with
    its signature (``FL.fourier_warp``: exact for pans).
    """
    if guidance_norm not in ("dps", "none"):
        raise ValueError(f"guidance_norm must be 'dps' or 'none', got {guidance_norm!r}")
    if guidance_target not in GUIDANCE_TARGETS:
        raise ValueError(f"guidance_target must be one of {list(GUIDANCE_TARGETS)}, got {guidance_target!r}")
    if guidance is not None and guidance_target == "current" and prev_flows is None:
        raise ValueError("guidance needs prev_flows (forward flows j-1 -> j, (T-1, B, 2, h, w))")
    if guidance is not None and guidance_target == "previous" and back_flows is None:
        raise ValueError("guidance_target='previous' needs back_flows (flows j -> j-1, (T-1, B, 2, h, w))")
    scheduler = make_scheduler("ddim", schedule=SCHEDULE)
    scheduler.set_timesteps(steps)
    acp = scheduler.alphas_cumprod.to(noises.device)
    t_frames, b = noises.shape[:2]
    lam = None
    if guidance is not None:
        lam = torch.as_tensor(guidance, dtype=noises.dtype, device=noises.device).expand(b).reshape(b, 1, 1, 1)
    out, prev_x0 = [], None
    for j in tqdm(range(t_frames), disable=not progress, desc="frames", leave=False):
        x, cond, x0_steps = noises[j], conds[j], []
        guide = lam is not None and j > 0
        for i, t in enumerate(scheduler.timesteps):
            tt = torch.full((b,), int(t), device=x.device)
            with torch.set_grad_enabled(guide):
                xg = x.detach().requires_grad_(guide)
                eps = unet(torch.cat([xg, cond], 1), tt).sample
                a = acp[int(t)]
                x0 = (xg - (1 - a).sqrt() * eps) / a.sqrt()
                if guide:
                    if guidance_target == "current":
                        warped, inside = (warp or FL.backward_warp)(x0, prev_flows[j - 1])
                        r = inside * (warped - prev_x0[i])
                    else:
                        target, inside = (warp or FL.backward_warp)(prev_x0[i], back_flows[j - 1])
                        r = inside * (x0 - target)
                    norm = r.flatten(1).norm(dim=1)
                    grad, = torch.autograd.grad((norm ** 2).sum(), xg)
            x_new = scheduler.step(eps.detach(), t, x, eta=0.0).prev_sample
            if guide:
                scale = lam / (norm.detach().reshape(b, 1, 1, 1) + 1e-8) if guidance_norm == "dps" else lam
                x_new = x_new - scale * grad
            x0_steps.append(x0.detach())
            x = x_new.detach()
        prev_x0 = x0_steps
        out.append(x)
    return torch.stack(out)


@torch.no_grad()
def warp_errors(y: torch.Tensor, first_flows: torch.Tensor, prev_flows: torch.Tensor) -> dict:
    """Per-frame warping errors of a video batch y (T, B, C, h, w): ``first`` [j-1, b] = WE(y_j, y_0, F_{0->j}),
    ``prev`` [j-1, b] = WE(y_j, y_{j-1}, F_{j-1->j}); flows (T-1, B, 2, h, w) on y's grid."""
    first = torch.stack([FL.warp_error(y[j], y[0], first_flows[j - 1]) for j in range(1, len(y))])
    prev = torch.stack([FL.warp_error(y[j], y[j - 1], prev_flows[j - 1]) for j in range(1, len(y))])
    return {"first": first, "prev": prev}


@torch.no_grad()
def restoration(pred: torch.Tensor, target: torch.Tensor) -> dict:
    """Per-image PSNR (peak 2 on [-1, 1]), SSIM (data range 2) and MSE on [0, 1] images; inputs (N, 3, H, W)."""
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    mse = ((pred - target) ** 2).flatten(1).mean(1)
    psnr = 10 * torch.log10(4 / mse.clamp_min(1e-20))
    s = ssim(pred.clamp(-1, 1), target, data_range=2.0, reduction="none")
    return {"psnr": psnr, "ssim": s, "mse01": mse / 4}
