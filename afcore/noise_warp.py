"""Warping diffusion noise along a video's motion (taught in notebooks/40_noise_warping.py).

A diffusion model turns noise into an image; to turn a *video's* worth of noise into consistent frames, frame j's
noise should be frame j-1's noise moved along the motion. White noise cannot simply be resampled at moved positions:
interpolating it lowers its variance and correlates neighbours (the model then sees a noise it was not trained on).
Methods (``METHODS``):

- ``fixed`` / ``resample``: the same noise for every frame / fresh noise for every frame (no warping).
- ``nearest`` / ``bilinear``: frame 0's noise sampled at ``W_j(p)``, the frame-0 position of frame j's pixel p,
  nearest-neighbour or bilinear (no renormalisation: variance drops between grid points); positions outside frame 0
  get fresh noise.
- ``hiwyn``: *integral noise* (Chang et al., "How I Warped Your Noise", 2024). Each noise pixel is read as the
  integral of a white field over its square: :func:`conditional_upsample` draws N x N sub-pixels given the pixel
  value (``sub = x / N + Z - mean(Z)``, Z i.i.d. N(0, 1): the block sum / N is x and, unconditionally, the
  sub-pixels are i.i.d. N(0, 1)); every sub-pixel centre is moved by the forward flow to the next frame and lands
  in one target pixel; a target pixel's value is (sum of its sub-pixels) / sqrt(count), which is exactly N(0, 1),
  and pixels fed by disjoint sub-pixel sets stay independent; pixels nobody lands in get fresh N(0, 1). Frames are
  transported one after the other (j-1 -> j). This is the "particle" form of the paper's polygon rasterisation.
- ``gp_*``: the Gaussian-process noise of Warped Diffusion (Daras et al., 2024). :class:`RFFNoise` is a random
  function ``xi(x) = sqrt(2/J) sum_j w_j cos(<z_j, x> + b_j)`` (w ~ N(0, 1), b ~ U(0, 2 pi), z ~ N(0, l^-2 I)
  truncated at ``truncation / l``) whose covariance approaches the squared-exponential kernel exp(-r^2 / 2 l^2) as
  J grows, with marginal variance exactly 1 for any z. Because it is a function, ``gp_warp`` re-evaluates it
  *exactly* at the moved positions (also outside the frame); ``gp_fixed/gp_resample/gp_nearest/gp_bilinear`` apply
  the baselines to its grid samples. The paper's length scale l = 2 / (pi R) on the unit square of an R-pixel frame
  is 2 / pi pixels, and truncation 2 puts the highest frequency exactly at Nyquist (0.5 cycles/pixel).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from afcore.flow import grid, sample_at

__all__ = ["METHODS", "RFFNoise", "GP_CHUNK_ELEMENTS", "chunk_plan", "gp_length_scale", "conditional_upsample",
           "integral_warp", "noise_video", "noise_stats"]

METHODS = ("fixed", "resample", "nearest", "bilinear", "hiwyn", "gp_fixed", "gp_resample", "gp_nearest",
           "gp_bilinear", "gp_warp")


def gp_length_scale(resolution: int | None = None, unit: str = "pixel") -> float:
    """Warped Diffusion's rule of thumb l = 2 / (pi R): in pixels (``unit="pixel"``) it is 2 / pi for any R."""
    if unit == "pixel":
        return 2 / math.pi
    if unit == "unit_square":
        if not resolution:
            raise ValueError("resolution is needed for unit='unit_square'")
        return 2 / (math.pi * resolution)
    raise ValueError(f"unit must be 'pixel' or 'unit_square', got {unit!r}")


# the largest intermediate of an RFFNoise evaluation, in elements (phases, then cosines in place): 1 GiB at float32.
# Large enough that every evaluation of the smoke and cpu profiles' notebook runs in one piece (as before the budget
# existed, so their numbers are unchanged), small enough for a GPU at the gpu profile's sizes (a 1000-frame batch of
# 128x128x4 noise with J = 3000 would otherwise need a 67 GB phase tensor).
GP_CHUNK_ELEMENTS = 1 << 28


def chunk_plan(batch: int, positions: int, width: int, budget: int = GP_CHUNK_ELEMENTS) -> tuple[int, int]:
    """How :class:`RFFNoise` splits an evaluation so that no intermediate exceeds ``budget`` elements.

    The phase tensor of ``batch`` noises at ``positions`` points with ``width`` = channels x features has
    ``batch * positions * width`` elements. Returns ``(batch_step, position_step)``: all of the batch and as many
    positions as fit; when even one position of the whole batch does not fit, one position at a time for as many
    batch members as fit. ``batch_step * position_step * width <= budget`` always holds.
    """
    if min(batch, positions, width) < 1:
        raise ValueError(f"batch, positions and width must be >= 1, got {batch}, {positions}, {width}")
    if budget < width:
        raise ValueError(f"chunk budget ({budget} elements) is below one position's channels x features ({width}); "
                         f"raise chunk to at least {width}")
    if batch * width <= budget:
        return batch, min(positions, budget // (batch * width))
    return budget // width, 1


def truncated_correlation(lag: float = 1.0, length_scale: float = 2 / math.pi, truncation: float = 2.0,
                          n: int = 2001) -> float:
    """Correlation of the GP noise at ``lag`` pixels along an axis, for the truncated frequency distribution of
    :class:`RFFNoise` in the limit of many features: ``E[cos(z . d)]`` with ``z ~ N(0, I / l^2)`` cut at
    ``|z| <= truncation / l``. In polar coordinates the angular mean is the Bessel function ``J0(r |d| / l)``, so
    this is ``int_0^T J0(r d / l) r exp(-r^2 / 2) dr / int_0^T r exp(-r^2 / 2) dr`` (trapezoids on ``n`` points;
    ``J0(x) = mean over theta in [0, pi] of cos(x sin theta)``). Without the cut it is ``exp(-d^2 / 2 l^2)``
    (0.291 at lag 1 and l = 2 / pi); the cut removes high frequencies and raises it to 0.391."""
    r = np.linspace(0.0, truncation, n)
    theta = np.linspace(0.0, math.pi, n)
    j0 = np.trapezoid(np.cos(np.outer(r * lag / length_scale, np.sin(theta))), theta, axis=1) / math.pi
    wgt = r * np.exp(-r ** 2 / 2)
    return float(np.trapezoid(j0 * wgt, r) / np.trapezoid(wgt, r))


class RFFNoise:
    """A batch of independent GP noise functions (B, C) by random Fourier features, evaluated at pixel positions.

    ``length_scale`` in pixels; ``features`` J; z's norm is truncated at ``truncation / length_scale`` by rejection.
    Call with positions (B, 2, H, W) (y, x) or ``grid_size=(H, W)``; returns (B, C, H, W) on ``device``.

    The random parameters are drawn (in float64) where ``generator`` lives, else on ``device`` (a generator on the
    GPU: nothing is drawn on the CPU and copied), and kept on ``device`` (default: the generator's device, else the
    CPU). A CPU generator gives the same draws whatever ``device`` is. ``chunk``: the budget, in elements, of the
    largest intermediate of an evaluation (see :func:`chunk_plan`; peak memory is about twice that, the phases and
    one copy inside the weighted sum).
    """

    def __init__(self, batch: int, channels: int, length_scale: float = 2 / math.pi, features: int = 3000,
                 truncation: float = 2.0, generator: torch.Generator | None = None, device=None,
                 dtype=torch.float32, chunk: int = GP_CHUNK_ELEMENTS):
        if features < 1 or length_scale <= 0 or truncation <= 0:
            raise ValueError(f"features, length_scale and truncation must be positive, got {features}, "
                             f"{length_scale}, {truncation}")
        if chunk < channels * features:
            raise ValueError(f"chunk ({chunk} elements) must be at least channels x features = {channels * features}")
        self.batch, self.channels, self.features, self.chunk, self.dtype = batch, channels, features, chunk, dtype
        src = generator.device if generator is not None else torch.device(device if device is not None else "cpu")
        dev = torch.device(device) if device is not None else src
        n = batch * channels * features
        z = torch.empty(0, 2, dtype=torch.float64, device=src)
        while len(z) < n:  # rejection sampling of the truncated Gaussian (truncation 2: ~86 % accepted)
            cand = torch.randn(2 * n, 2, generator=generator, dtype=torch.float64, device=src)
            z = torch.cat([z, cand[cand.norm(dim=1) <= truncation]])
        self.z = (z[:n] / length_scale).reshape(batch, channels * features, 2).to(dev, dtype)
        self.b = (2 * math.pi * torch.rand(batch, channels * features, generator=generator,
                                           dtype=torch.float64, device=src)).to(dev, dtype)
        self.w = torch.randn(batch, channels, features, generator=generator, dtype=torch.float64,
                             device=src).to(dev, dtype)
        self.w = self.w * math.sqrt(2 / features)

    @property
    def device(self) -> torch.device:
        return self.z.device

    def __call__(self, pos: torch.Tensor | None = None, grid_size=None) -> torch.Tensor:
        if pos is None:
            if grid_size is None:
                raise ValueError("give positions (B, 2, H, W) or grid_size=(H, W)")
            pos = grid(*grid_size, device=self.z.device, dtype=self.dtype)[None].expand(self.batch, -1, -1, -1)
        b, _, h, w = pos.shape
        if b != self.batch:
            raise ValueError(f"positions have batch {b}, the noise has {self.batch}")
        if pos.device != self.z.device:
            raise ValueError(f"positions are on {pos.device}, the noise lives on {self.z.device}")
        p = pos.to(self.dtype).reshape(b, 2, h * w).transpose(1, 2)  # (B, HW, 2)
        cj = self.channels * self.features
        bstep, step = chunk_plan(b, h * w, cj, self.chunk)
        rows = []
        for k in range(0, b, bstep):
            out = []
            for i in range(0, h * w, step):  # (b, n, 2) @ (b, 2, CJ): phases, then cos, then the weighted sum over J
                ph = torch.baddbmm(self.b[k:k + bstep, None, :], p[k:k + bstep, i:i + step],
                                   self.z[k:k + bstep].transpose(1, 2))
                c = torch.cos(ph) if ph.requires_grad else ph.cos_()  # in place: one budget-sized tensor less
                c = c.reshape(ph.shape[0], -1, self.channels, self.features)
                out.append(torch.einsum("bncj,bcj->bcn", c, self.w[k:k + bstep]))
            rows.append(torch.cat(out, -1) if len(out) > 1 else out[0])
        return (torch.cat(rows) if len(rows) > 1 else rows[0]).reshape(b, self.channels, h, w)


def conditional_upsample(noise: torch.Tensor, factor: int = 8, generator: torch.Generator | None = None):
    """N x N sub-pixels per pixel given the pixel (HIWYN): ``x / N + Z - mean_block(Z)``; (B, C, N H, N W)."""
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    b, c, h, w = noise.shape
    z = torch.randn(b, c, h, factor, w, factor, generator=generator, device=noise.device, dtype=noise.dtype) \
        if generator is None or generator.device == noise.device else \
        torch.randn(b, c, h, factor, w, factor, generator=generator, dtype=noise.dtype,
                    device=generator.device).to(noise.device)
    z = z - z.mean(dim=(3, 5), keepdim=True)
    return (noise[:, :, :, None, :, None] / factor + z).reshape(b, c, h * factor, w * factor)


def _randn_like(x, generator):
    if generator is None or generator.device == x.device:
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=generator.device).to(x.device)


def integral_warp(noise: torch.Tensor, flow: torch.Tensor, factor: int = 8,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Transport white noise (B, C, H, W) along the forward ``flow`` (B, 2, H, W) to the next frame (HIWYN).

    Every sub-pixel of the conditionally upsampled noise moves with the flow at its centre and lands in the pixel
    that contains it; a pixel's value is the sum of what lands in it divided by the square root of the count, and
    pixels nothing lands in get fresh noise. The flow is interpolated bilinearly at the sub-pixel centres and
    continued linearly beyond the outer pixel centres, so for an affine motion every sub-pixel, the frame's outer
    half pixel included, moves exactly as the motion says (the same as transporting each pixel's square as a
    polygon).
    """
    b, c, h, w = noise.shape
    if flow.shape[1:] != (2, h, w) or flow.shape[0] not in (1, b):
        raise ValueError(f"flow must be (B or 1, 2, H, W) with (B, H, W) = {(b, h, w)}, got {tuple(flow.shape)}")
    fb = flow.shape[0]  # a flow shared by the whole batch is moved once
    n = factor
    sub = conditional_upsample(noise, n, generator)
    offs = (torch.arange(n, device=noise.device, dtype=flow.dtype) + 0.5) / n - 0.5
    pos = torch.stack(torch.meshgrid(
        (torch.arange(h, device=noise.device, dtype=flow.dtype)[:, None] + offs).flatten(),
        (torch.arange(w, device=noise.device, dtype=flow.dtype)[:, None] + offs).flatten(), indexing="ij"))
    pos = pos[None].expand(fb, -1, -1, -1)
    moved = pos + sample_at(flow, pos, padding="extrapolate")
    ty, tx = torch.round(moved[:, 0]), torch.round(moved[:, 1])
    ok = (ty >= 0) & (ty <= h - 1) & (tx >= 0) & (tx <= w - 1)
    idx = (ty.clamp(0, h - 1) * w + tx.clamp(0, w - 1)).long().reshape(fb, 1, -1).expand(b, 1, -1)
    okf = ok.reshape(fb, 1, -1).to(noise.dtype).expand(b, 1, -1)
    total = torch.zeros(b, c, h * w, device=noise.device, dtype=noise.dtype)
    total.scatter_add_(2, idx.expand(b, c, idx.shape[-1]), sub.reshape(b, c, -1) * okf)
    count = torch.zeros(b, 1, h * w, device=noise.device, dtype=noise.dtype).scatter_add_(2, idx, okf)
    out = (total / count.clamp_min(1).sqrt()).reshape(b, c, h, w)
    fresh = _randn_like(out, generator)
    return torch.where(count.reshape(b, 1, h, w) > 0, out, fresh)


def _resample_first(first: torch.Tensor, maps: torch.Tensor, mode: str, fresh: torch.Tensor) -> torch.Tensor:
    """``first`` (B, C, H, W) sampled at frame-0 positions ``p + maps(p)`` (B, 2, H, W); outside: ``fresh``."""
    h, w = first.shape[-2:]
    pos = grid(h, w, device=first.device, dtype=maps.dtype)[None] + maps
    ref = torch.round(pos) if mode == "nearest" else pos
    inside = ((ref[:, 0] >= 0) & (ref[:, 0] <= h - 1) & (ref[:, 1] >= 0) & (ref[:, 1] <= w - 1))[:, None]
    return torch.where(inside, sample_at(first, pos, mode=mode), fresh)


def noise_video(method: str, shape, to_first: torch.Tensor, prev_flows: torch.Tensor | None = None,
                generator: torch.Generator | None = None, device=None, factor: int = 8, rff_features: int = 3000,
                rff_truncation: float = 2.0, length_scale: float = 2 / math.pi) -> torch.Tensor:
    """Noise for every frame of a batch of videos: (T, B, C, H, W).

    ``shape`` = (B, C, H, W) of one frame; ``to_first`` (T, B, 2, H, W): for frame j, pixel p shows frame 0's
    position ``p + to_first[j](p)`` (frame 0: zeros); ``prev_flows`` (T-1, B, 2, H, W): forward flows j-1 -> j
    (for ``hiwyn``). Flows are in the noise grid's pixels.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    b, c, h, w = shape
    t = to_first.shape[0]
    dev = device if device is not None else to_first.device
    gp = method.startswith("gp_")

    def draw():
        if gp:
            return RFFNoise(b, c, length_scale, rff_features, rff_truncation, generator, dev)(grid_size=(h, w))
        return torch.randn(b, c, h, w, generator=generator, dtype=torch.float32, device="cpu").to(dev) \
            if generator is not None and generator.device != torch.device(dev) else \
            torch.randn(b, c, h, w, generator=generator, device=dev)

    if method == "gp_warp":
        rff = RFFNoise(b, c, length_scale, rff_features, rff_truncation, generator, dev)
        base = grid(h, w, device=dev, dtype=torch.float32)[None]
        return torch.stack([rff(base + to_first[j].to(dev)) for j in range(t)])
    first = draw()
    frames = [first]
    base = method[3:] if gp else method
    for j in range(1, t):
        if base == "fixed":
            frames.append(first)
        elif base == "resample":
            frames.append(draw())
        elif base in ("nearest", "bilinear"):
            frames.append(_resample_first(first, to_first[j].to(dev), base, draw()))
        else:  # hiwyn, sequential transport j-1 -> j
            if prev_flows is None:
                raise ValueError("method 'hiwyn' needs prev_flows (forward flows j-1 -> j)")
            frames.append(integral_warp(frames[-1], prev_flows[j - 1].to(dev), factor, generator))
    return torch.stack(frames)


def noise_stats(x: torch.Tensor) -> dict:
    """Statistics of noise draws x (N, ..., H, W) that show what a warp preserves.

    ``mean``/``var``: over all values; ``var_map_range``: min and max of the per-pixel variance over draws;
    ``corr_x``/``corr_y``: lag-1 neighbour correlation; ``spectrum``: radial power spectrum (freqs, power), flat
    (= 1 everywhere) for white unit noise.
    """
    from afcore.signal import radial_power_spectrum

    x = x.double()
    flat = x.reshape(x.shape[0], -1, *x.shape[-2:])
    var_map = flat.var(0)
    xc = x - x.mean()
    v = (xc ** 2).mean()
    corr_x = float((xc[..., :, 1:] * xc[..., :, :-1]).mean() / v)
    corr_y = float((xc[..., 1:, :] * xc[..., :-1, :]).mean() / v)
    freqs, power = radial_power_spectrum(x.reshape(-1, *x.shape[-2:]))
    return {"mean": float(x.mean()), "var": float(x.var()), "var_map_range": [float(var_map.min()),
            float(var_map.max())], "corr_x": corr_x, "corr_y": corr_y, "spectrum": (freqs, power)}
