"""Image-quality and equivariance metrics: PSNR, SPSNR, EQ-T, EQ-T_frac, EQ-R, and mean +- standard error.

Taught by notebook 03_equivariance; the conventions are written out in docs/conventions.md. In short:
- images live in [-1, 1], so PSNR's peak is 2 (``peak=2.0``, StyleGAN3's convention); latents have no fixed range,
  so their peak is the per-sample dynamic range (max - min) of the target inside the mask (``peak="range"``, this
  workbook's convention). The AF-LDM reference's ``mask_psnr`` takes max - min over *both* masked tensors (the
  masked-out pixels count as zeros) and over the whole batch: ``peak="joint-range"`` (with ``per_sample=False``;
  its evaluation script shifts one latent at a time, where both readings coincide);
- masked PSNR: MSE = sum(mask * err^2) / sum(mask) (the mask broadcast over batch and channels), PSNR =
  20 log10(peak) - 10 log10(MSE); pooled over the whole batch by default, or one value per sample
  (``per_sample=True``);
- reported SPSNR values are per-sample PSNRs averaged in dB over samples and shifts, given as mean +- standard error
  (``mean_sem``); EQ-T / EQ-T_frac / EQ-R pool the error over shifts, as StyleGAN3 does;
- shifts are (dy, dx) pixels, positive toward larger indices; cropped shifts zero-fill and mask the border.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from afcore import signal

PEAK = 2.0


def mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None, per_sample: bool = False):
    """Pooled (or per-sample, over all but the first dim) mean squared error inside ``mask``."""
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    err = (a - b).to(torch.float64) ** 2
    m = torch.ones_like(err) if mask is None else mask.to(torch.float64).expand_as(err)
    if per_sample:
        dims = tuple(range(1, err.ndim))
        return (err * m).sum(dims) / m.sum(dims).clamp(min=1e-12)
    total = m.sum()
    if total <= 0:
        raise ValueError("mask selects no pixels")
    return (err * m).sum() / total


def dynamic_range(b: torch.Tensor, mask: torch.Tensor | None = None, per_sample: bool = True) -> torch.Tensor:
    """max - min of ``b`` inside ``mask``: one value per sample (over all but the first dim), or over the batch."""
    m = torch.ones_like(b, dtype=torch.bool) if mask is None else mask.expand_as(b) > 0
    hi = torch.where(m, b, torch.full_like(b, -math.inf)).to(torch.float64)
    lo = torch.where(m, b, torch.full_like(b, math.inf)).to(torch.float64)
    if per_sample:
        dims = tuple(range(1, b.ndim))
        return hi.amax(dims) - lo.amin(dims)
    return hi.max() - lo.min()


PEAKS = ("range", "joint-range")


def joint_range(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None,
                per_sample: bool = False) -> torch.Tensor:
    """The AF-LDM reference's PSNR peak (``mask_psnr``): max - min over ``a * mask`` and ``b * mask`` together (pixels
    outside the mask count as zeros), over the whole batch, or per sample with ``per_sample``."""
    m = torch.ones((), dtype=a.dtype, device=a.device) if mask is None else mask.to(a.dtype)
    both = torch.stack([(a * m).to(torch.float64), (b * m).to(torch.float64)], 1)
    if per_sample:
        dims = tuple(range(1, both.ndim))
        return both.amax(dims) - both.amin(dims)
    return both.max() - both.min()


def psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None, peak: float | str = PEAK,
         per_sample: bool = False) -> torch.Tensor:
    """PSNR in dB: 20 log10(peak) - 10 log10(MSE), MSE pooled over the mask (or per sample).

    ``peak``: a number (2 for images in [-1, 1]); ``"range"``: the dynamic range (max - min) of the target ``b``
    inside the mask, per sample when ``per_sample`` (else over the batch) -- this workbook's convention for latents;
    ``"joint-range"``: the AF-LDM reference's, max - min over both masked tensors (see ``joint_range``).
    """
    if isinstance(peak, str):
        if peak not in PEAKS:
            raise ValueError(f"peak must be a positive number or one of {list(PEAKS)}, got {peak!r}")
        p = (dynamic_range(b, mask, per_sample) if peak == "range" else joint_range(a, b, mask, per_sample))
        p = p.clamp(min=1e-12)
        return 20 * torch.log10(p) - 10 * torch.log10(mse(a, b, mask, per_sample).clamp(min=1e-20))
    if peak <= 0:
        raise ValueError(f"peak must be > 0, got {peak!r}")
    return 20 * math.log10(peak) - 10 * torch.log10(mse(a, b, mask, per_sample).clamp(min=1e-20))


def mean_sem(values) -> tuple[float, float]:
    """Mean and standard error of the mean (sample standard deviation / sqrt(n); 0 for a single value)."""
    v = torch.as_tensor([float(x) for x in (values.flatten().tolist() if isinstance(values, torch.Tensor)
                                            else values)], dtype=torch.float64)
    if v.numel() == 0:
        raise ValueError("mean_sem: no values")
    sem = float(v.std(unbiased=True) / math.sqrt(v.numel())) if v.numel() > 1 else 0.0
    return float(v.mean()), sem


SPSNR_MODES = ("crop", "circular", "circular-valid")


def spsnr(f: Callable, x: torch.Tensor, shift, scale: float = 1.0, peak: float | str = PEAK,
          mode: str = "crop", fx: torch.Tensor | None = None, per_sample: bool = False) -> torch.Tensor:
    """Shift PSNR (AF-LDM): PSNR( f(T_d x), T_{s d} f(x) ) over the valid region of both shifts.

    ``scale`` is f's output/input size ratio (VAE encoder 1/8, decoder 8, U-Net 1). ``mode="crop"`` (default)
    zero-fills and masks the border on both sides; ``mode="circular"`` uses circular Fourier shifts and no mask
    (for circularly padded or FFT-based models); ``mode="circular-valid"`` shifts circularly (the convention for
    initial diffusion noise: a circularly shifted white noise is still white noise, a zero-filled one is not) and
    compares only the pixels that did not wrap around. Pass ``fx`` to reuse f(x). ``peak`` and ``per_sample`` as in
    ``psnr`` (``peak="range"`` for latents; ``per_sample=True`` returns one value per sample, the reported form).
    """
    if mode not in SPSNR_MODES:
        raise ValueError(f"mode must be one of {list(SPSNR_MODES)}, got {mode!r}")
    d = signal._check_shift(shift)
    shifted_in, _ = signal.shift(x, d, mode="crop" if mode == "crop" else "circular")
    out_shifted = f(shifted_in)
    fx = f(x) if fx is None else fx
    ds = (d[0] * scale, d[1] * scale)
    target, mask = signal.shift(fx, ds, mode="crop" if mode == "crop" else "circular")
    if mode != "circular":
        # crop: the input's invalid border maps to a scaled border in the output; circular-valid: compare only
        # the pixels whose source did not wrap around
        mask = mask * signal.valid_mask(fx.shape[-2:], ds, fx.device).to(mask.dtype)
    return psnr(out_shifted * mask, target * mask, mask, peak, per_sample)


def _random_shift(size, fraction: float, generator: torch.Generator | None, integer: bool):
    h, w = size
    u = torch.rand(2, generator=generator, dtype=torch.float64, device="cpu") * 2 - 1  # host-side draw
    d = (float(u[0]) * fraction * h, float(u[1]) * fraction * w)
    return (round(d[0]), round(d[1])) if integer else d


def eq_t(f: Callable, x: torch.Tensor, n: int = 8, fraction: float = 0.125, peak: float = PEAK,
         generator: torch.Generator | None = None) -> float:
    """StyleGAN3's EQ-T: integer shifts d ~ U[-fraction, fraction] of the size (rounded), zero fill, valid mask;
    PSNR between f(T_d x) and T_d f(x), pooled over ``n`` random shifts. Returns dB."""
    return _eq_shift(f, x, n, fraction, peak, generator, integer=True)


def eq_t_frac(f: Callable, x: torch.Tensor, n: int = 8, fraction: float = 0.125, peak: float = PEAK,
              generator: torch.Generator | None = None) -> float:
    """EQ-T_frac: as EQ-T with unrounded (fractional) shifts; the input is shifted by the band-limited Fourier shift
    and the output target by Lanczos-3 (StyleGAN3's reference interpolation), with cropped valid masks."""
    return _eq_shift(f, x, n, fraction, peak, generator, integer=False)


def _eq_shift(f, x, n, fraction, peak, generator, integer):
    errs = []
    fx = f(x)
    scale = fx.shape[-1] / x.shape[-1]
    for _ in range(n):
        d = _random_shift(x.shape[-2:], fraction, generator, integer)
        xs, _ = signal.shift(x, d, mode="crop")
        ds = (d[0] * scale, d[1] * scale)
        if integer:
            target, mask = signal.shift(fx, ds, mode="crop")
        else:
            mask = signal.valid_mask(fx.shape[-2:], ds, fx.device).to(fx.dtype)
            target = signal.lanczos_shift(fx, ds) * mask
        mask = mask * signal.valid_mask(fx.shape[-2:], ds, fx.device).to(mask.dtype)
        errs.append(mse(f(xs) * mask, target * mask, mask))
    return _db(torch.stack(errs).mean(), peak)


def _db(err: torch.Tensor, peak: float) -> float:
    return float(20 * math.log10(peak) - 10 * torch.log10(err.clamp(min=1e-20)))


def eq_r(f: Callable, x: torch.Tensor, n: int = 8, peak: float = PEAK, angles=None,
         generator: torch.Generator | None = None) -> float:
    """EQ-R: angles ~ U[-180, 180] degrees (or the given list), band-limited (Fourier) rotation of the input and
    of the output target, PSNR inside the inscribed circle pooled over the angles. Returns dB."""
    if angles is None:
        angles = ((torch.rand(n, generator=generator, dtype=torch.float64, device="cpu") * 2 - 1) * 180).tolist()
    fx = f(x)
    mask = signal.inscribed_circle_mask(*fx.shape[-2:], margin=1.0, device=fx.device).to(fx.dtype)
    errs = [mse(f(signal.rotate(x, a)) * mask, signal.rotate(fx, a) * mask, mask) for a in angles]
    return _db(torch.stack(errs).mean(), peak)
