"""Latent I2SB (image-to-image Schroedinger bridge) for x4 super-resolution (taught in notebooks/50_latent_sr.py;
equations and metric definitions in docs/sr.md).

- ``bridge_schedule``: betas, sigma_f (forward std), sigma_b (backward std) and the bridge marginal's coefficients.
  ``betas="symmetric"`` (default): I2SB's own schedule, sqrt-linear from 1e-4 to beta_max / N (beta_max 0.3) with the
  first half mirrored, so the bridge is as noisy near x1 as near x0; ``"ldm"``: the AF-LDM code's choice, the LDM's
  scaled-linear betas 0.0015..0.0195 (not symmetric: much larger total variance).
- ``q_sample`` / ``label`` / ``i2sb_loss``: training. x_n = mu0 x0 + mu1 x1 + sigma_sb eps (``ot_ode=True`` drops
  the noise, the AF-LDM code's deterministic bridge); the net sees only x_n and the bridge index n as its timestep
  and predicts (x_n - x0) / sigma_f(n). The optional equivariance loss is ``afcore.ldm``'s, on x_n.
- ``sample``: from x1 (the degraded latent) down to n = 0 with the Gaussian-product posterior; in the stochastic
  mode the per-step noises can be passed in, so a shifted run can reuse the unshifted run's noise shifted circularly.
- ``degrade_sr4``: bicubic down x4 + nearest up x4 (the reference's) or the ideal (FFT) down/up.
- ``sr_shift_consistency`` / ``image_shift_consistency``: the two shift protocols; ``matched_band_spsnr``: the first
  protocol's image SPSNR recomputed after one low-pass on both sides, so a blurrier model cannot score higher only by
  having less high-frequency content to get wrong; ``PointwiseLinear``: the
  positive control (exactly shift-equivariant by construction); ``ZeroNet``: the "do nothing" model (with the OT-ODE
  sampler it returns its input unchanged), which puts the input and the VAE alone through the same protocols.

Everything random comes from a ``torch.Generator`` on the tensors' device.
"""
from __future__ import annotations

import contextlib
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from afcore import ldm, metrics
from afcore.attention import EquivariantAttention
from afcore.filters import lowpass_filter
from afcore.signal import downsample, fir_filter, fourier_shift, upsample, valid_mask

__all__ = ["BETAS", "DEGRADATIONS", "bridge_schedule", "q_sample", "label", "pred_x0", "i2sb_loss",
           "space_indices", "draw_noises", "sample", "degrade_sr4", "sr_shift_consistency",
           "image_shift_consistency", "PointwiseLinear", "ZeroNet"]

BETAS = ("symmetric", "ldm")
DEGRADATIONS = ("bicubic_nearest", "ideal")


def _check(value, allowed, name):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def bridge_schedule(betas: str = "symmetric", n: int = 1000, beta_max: float = 0.3, device=None) -> dict:
    """Tensors of length ``n`` (float32 on ``device``, computed in float64): ``betas``, ``std_fwd`` = sqrt(sum_{m<=n}
    beta_m), ``std_bwd`` = sqrt(sum_{m>=n} beta_m), ``mu_x0`` = s_b^2 / (s_f^2 + s_b^2), ``mu_x1`` = s_f^2 / (...),
    ``std_sb`` = sqrt(s_f^2 s_b^2 / (...))."""
    _check(betas, BETAS, "betas (sr_betas)")
    if n < 2 or n % 2:
        raise ValueError(f"n (bridge steps) must be an even number >= 2, got {n}")
    if betas == "symmetric":  # I2SB's make_beta_schedule(linear_end=beta_max / n), first half mirrored
        b = torch.linspace(1e-4 ** 0.5, (beta_max / n) ** 0.5, n, dtype=torch.float64, device=device) ** 2
        b = torch.cat([b[:n // 2], b[:n // 2].flip(0)])
    else:  # the AF-LDM code's I2SB scheduler: the LDM's scaled-linear betas
        lo, hi = ldm.SCHEDULES["af-ldm"]
        b = torch.linspace(lo ** 0.5, hi ** 0.5, n, dtype=torch.float64, device=device) ** 2
    var_f = b.cumsum(0)
    var_b = b.flip(0).cumsum(0).flip(0)
    tot = var_f + var_b
    out = {"betas": b, "std_fwd": var_f.sqrt(), "std_bwd": var_b.sqrt(), "mu_x0": var_b / tot, "mu_x1": var_f / tot,
           "std_sb": (var_f * var_b / tot).sqrt()}
    return {k: v.float() for k, v in out.items()}


def _at(v, n, x):
    return v[n].to(x.dtype).view(-1, *([1] * (x.dim() - 1)))


def q_sample(sched: dict, n: torch.Tensor, x0, x1, generator: torch.Generator | None = None, ot_ode: bool = False):
    """Bridge marginal at indices ``n`` (one per sample); the noise is drawn from ``generator`` unless ``ot_ode``."""
    x = _at(sched["mu_x0"], n, x0) * x0 + _at(sched["mu_x1"], n, x0) * x1
    if ot_ode:
        return x
    eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    return x + _at(sched["std_sb"], n, x0) * eps


def label(sched: dict, n, x0, x_n):
    """The regression target (x_n - x0) / sigma_f(n)."""
    return (x_n - x0) / _at(sched["std_fwd"], n, x0)


def pred_x0(sched: dict, n, x_n, out):
    """x0 from the net's output: x_n - sigma_f(n) out (inverts ``label``)."""
    return x_n - _at(sched["std_fwd"], n, x_n) * out


def i2sb_loss(unet, x0, x1, sched: dict, generator: torch.Generator, ot_ode: bool = False, eq_weight: float = 0.0,
              cfa: bool = True, stop_grad: str = "none", max_frac: float = 0.375, cfa_detach: bool = True):
    """Bridge-matching MSE + eq_weight * the U-Net equivariance loss on x_n; returns (loss, logs).

    ``generator`` (on x0's device) draws the indices, the bridge noise and the shift, in that order; the unshifted
    pass is shared by both terms (and is the CFA reference with ``cfa``). ``stop_grad`` and ``cfa_detach`` (default
    True: the stored CFA keys/values carry no gradient, as in the reference) as in ``afcore.ldm.ldm_loss``."""
    n = torch.randint(0, len(sched["betas"]), (x0.shape[0],), generator=generator, device=x0.device)
    x_n = q_sample(sched, n, x0, x1, generator, ot_ode)
    target = label(sched, n, x0, x_n)
    if eq_weight <= 0:
        loss = F.mse_loss(unet(x_n, n).sample, target)
        return loss, {"bridge": loss.item()}
    d = ldm.sample_latent_shift(x0.shape[-2:], generator, max_frac=max_frac)
    pred, shifted = ldm._paired_passes(unet, x_n, n, d, cfa, stop_grad, cfa_detach)
    bridge = F.mse_loss(pred, target)
    equiv, _ = ldm._masked_shift_error(shifted, pred, d, stop_grad)
    return bridge + eq_weight * equiv, {"bridge": bridge.item(), "equivariance": equiv.item()}


def space_indices(num_steps: int, count: int) -> list[int]:
    """``count`` indices from 0 to num_steps - 1, evenly spaced: I2SB's sampling grid, built as NVlabs/I2SB builds
    it. A float position starts at 0 and the stride (num_steps - 1) / (count - 1) is added to it once per index;
    each index is Python's round() of the running position. Computing ``round(i * stride)`` instead gives the same
    grid for most counts but not all: where i * stride lands on a half (at NFE 20: 10 * 49.95 = 499.5) the
    accumulated float sits just below or above it, so the two rules round to neighbouring indices (499 vs 500).
    Matching the reference's rule keeps our NFE-k sampler on the exact time grid its models are run on."""
    if not 2 <= count <= num_steps:
        raise ValueError(f"count (sr_nfe + 1) must be in [2, {num_steps}], got {count}")
    stride = (num_steps - 1) / (count - 1)
    position, taken = 0.0, []
    for _ in range(count):
        taken.append(round(position))
        position += stride  # accumulated, not i * stride: the reference's rounding (see above)
    return taken


def draw_noises(shape, nfe: int, generator: torch.Generator, device, dtype=torch.float32) -> list:
    """The stochastic sampler's per-step noises (one per step except the last, which adds none)."""
    return [torch.randn(shape, generator=generator, device=device, dtype=dtype) for _ in range(nfe - 1)]


@torch.no_grad()
def sample(unet, x1, sched: dict, nfe: int = 20, ot_ode: bool = False, noises: list | None = None,
           generator: torch.Generator | None = None):
    """Run the bridge from x_{N-1} = x1 to n = 0 in ``nfe`` network calls; returns (x at n = 0, last x0 prediction).

    Step n -> m < n: x_m = (s_d^2 / s_f(n)^2) x0_hat + (s_f(m)^2 / s_f(n)^2) x_n with s_d^2 = s_f(n)^2 - s_f(m)^2,
    plus (stochastic mode, m > 0) sqrt(s_f(m)^2 s_d^2 / s_f(n)^2) times the step's noise: ``noises[i]`` when given
    (see ``draw_noises``), else drawn from ``generator``. I2SB returns x at n = 0, which differs from the last x0
    prediction by beta_0 / s_f(n_1)^2 of a step (tiny); both are returned.
    """
    steps = space_indices(len(sched["betas"]), nfe + 1)[::-1]
    var = sched["std_fwd"] ** 2
    x, x0 = x1, x1
    for i, (n, m) in enumerate(zip(steps[:-1], steps[1:])):
        t = torch.full((x.shape[0],), n, device=x.device, dtype=torch.long)
        x0 = pred_x0(sched, t, x, unet(x, t).sample)
        var_d = var[n] - var[m]
        x_new = (var_d / var[n]) * x0 + (var[m] / var[n]) * x
        if not ot_ode and m > 0:
            e = noises[i] if noises is not None else torch.randn(x.shape, generator=generator, device=x.device,
                                                                 dtype=x.dtype)
            x_new = x_new + (var[m] * var_d / var[n]).sqrt() * e
        x = x_new
    return x, x0


def degrade_sr4(x: torch.Tensor, method: str = "bicubic_nearest") -> torch.Tensor:
    """The x4 SR degradation at the input's size: ``"bicubic_nearest"`` (the reference: antialiased bicubic down x4,
    nearest up x4) or ``"ideal"`` (ideal FFT low-pass down x4 and ideal up x4: exactly shift-equivariant)."""
    _check(method, DEGRADATIONS, "method (sr_degradation)")
    if x.shape[-1] % 4 or x.shape[-2] % 4:
        raise ValueError(f"image size must be a multiple of 4, got {tuple(x.shape[-2:])}")
    if method == "ideal":
        return upsample(downsample(x, 4, "ideal"), 4, "ideal")
    lr = F.interpolate(x, scale_factor=0.25, mode="bicubic", antialias=True, align_corners=False)
    return F.interpolate(lr, scale_factor=4, mode="nearest")


def _shift_noises(noises, d):
    return None if noises is None else [fourier_shift(e, d) for e in noises]  # circular: white noise stays white


@torch.no_grad()
def sr_shift_consistency(unet, x1, sched: dict, shifts, nfe: int = 20, ot_ode: bool = False, cfa: bool = True,
                         decode=None, factor: int = 4, generator: torch.Generator | None = None) -> dict:
    """The reference's latent shift test: SR of x1 and of T_d^crop x1 for every d in ``shifts`` (latent pixels).

    Stochastic mode: one set of per-step noises (from ``generator``) for the unshifted run; each shifted run gets
    them shifted circularly by d. ``cfa`` anchors every shifted run's attention on the unshifted run. Returns
    [shift, sample] tensors ``latent`` (per-sample PSNR of the output against T_d of the unshifted output on the
    valid latent mask, peak = the target's dynamic range) and, with ``decode``, ``image`` (decoded, image shift
    factor * d, valid image mask, peak 2), plus ``reference`` / ``frames`` (decoded outputs) and ``inputs``.
    """
    if not len(shifts):
        raise ValueError("shifts must list at least one (dy, dx)")
    noises = None if ot_ode else draw_noises(x1.shape, nfe, generator, x1.device, x1.dtype)
    context = EquivariantAttention(unet) if cfa else contextlib.nullcontext()
    latent, image, frames, inputs = [], [], [], []
    with context as eq:
        if cfa:
            eq.record()
        ref, _ = sample(unet, x1, sched, nfe, ot_ode, noises)
        image_ref = decode(ref) if decode is not None else None
        for d in shifts:
            if cfa:
                eq.use()
            mask = valid_mask(x1.shape[-2:], d, device=x1.device)
            xs = fourier_shift(x1, d) * mask
            out, _ = sample(unet, xs, sched, nfe, ot_ode, _shift_noises(noises, d))
            latent.append(metrics.psnr(out, fourier_shift(ref, d), mask, peak="range", per_sample=True))
            if decode is not None:
                di = (d[0] * factor, d[1] * factor)
                image_mask = valid_mask(image_ref.shape[-2:], di, device=x1.device)
                y = decode(out)
                image.append(metrics.psnr(y, fourier_shift(image_ref, di), image_mask, peak=2.0, per_sample=True))
                frames.append(y)
                inputs.append(xs)
    result = {"latent": torch.stack(latent)}
    if decode is not None:
        result.update(image=torch.stack(image), reference=image_ref, frames=torch.stack(frames),
                      inputs=torch.stack(inputs))
    return result


def erode_circular(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """(H, W) 0/1 mask -> the pixels whose whole (2 radius + 1)^2 neighbourhood, read with wrap-around, is inside
    ``mask``: where a circular FIR filter of that radius sees only masked pixels."""
    if radius == 0:
        return mask
    outside = F.pad((1 - mask)[None, None], (radius,) * 4, mode="circular")
    return 1 - F.max_pool2d(outside, 2 * radius + 1, stride=1)[0, 0]


@torch.no_grad()
def matched_band_spsnr(result: dict, shifts, cutoff: float, factor: int = 4, numtaps: int = 9) -> torch.Tensor:
    """The image SPSNR of an ``sr_shift_consistency`` result (with ``decode``) after one Kaiser low-pass (``numtaps``
    taps, ``cutoff`` in units of the image Nyquist, applied separably with wrap-around) on both the shifted run and
    the shifted unshifted run; [shift, sample], peak 2.

    Two models compared at the same cutoff are compared on the same band, so the one that outputs less detail
    cannot win by having less detail to get wrong. The filter and the Fourier shift are both circular convolutions,
    so they commute: filtering the shifted reference equals shifting the filtered one. The valid mask is eroded by
    the filter's radius (circularly), so no compared pixel reads the cropped-away band."""
    if numtaps % 2 == 0:
        raise ValueError(f"numtaps must be odd so the filter is centred, got {numtaps}")
    ref, frames = result["reference"], result["frames"]
    if len(frames) != len(shifts):
        raise ValueError(f"result holds {len(frames)} shifted runs but shifts lists {len(shifts)}")
    taps = lowpass_filter(numtaps, cutoff, dtype=ref.dtype).to(ref.device)
    ref_lp = fir_filter(ref, taps, padding="circular")
    out = []
    for y, d in zip(frames, shifts):
        di = (d[0] * factor, d[1] * factor)
        mask = erode_circular(valid_mask(ref.shape[-2:], di, device=ref.device), numtaps // 2)
        out.append(metrics.psnr(fir_filter(y, taps, padding="circular"), fourier_shift(ref_lp, di), mask, peak=2.0,
                                per_sample=True))
    return torch.stack(out)


@torch.no_grad()
def image_shift_consistency(unet, hr, sched: dict, deltas, encode, decode, degradation: str = "bicubic_nearest",
                            nfe: int = 20, ot_ode: bool = False, cfa: bool = True, factor: int = 4,
                            generator: torch.Generator | None = None) -> dict:
    """Integer image shifts of the clean image before degradation: for every delta (dy, dx) in ``deltas`` (image px)
    roll HR circularly, degrade, encode, SR, decode. Returns [shift, sample] tensors ``spsnr`` (against T_delta of the
    unshifted SR, on the non-wrapped region, peak 2) and ``psnr_hr`` (the output rolled back by -delta against HR,
    on the pixels no delta wrapped around, peak 2: its spread over delta is the flicker), and ``psnr_hr_ref``
    [sample] (the unshifted SR against HR, whole image). Stochastic noises shifted by delta / factor as in
    ``sr_shift_consistency``; CFA anchored on the unshifted run."""
    noises = None
    context = EquivariantAttention(unet) if cfa else contextlib.nullcontext()
    spsnr, back = [], []
    common = torch.ones(hr.shape[-2:], device=hr.device, dtype=hr.dtype)
    with context as eq:
        if cfa:
            eq.record()
        x1 = encode(degrade_sr4(hr, degradation))
        if not ot_ode:
            noises = draw_noises(x1.shape, nfe, generator, x1.device, x1.dtype)
        ref = decode(sample(unet, x1, sched, nfe, ot_ode, noises)[0])
        full = torch.ones(hr.shape[-2:], device=hr.device, dtype=hr.dtype)
        ref_hr = metrics.psnr(ref, hr, full, peak=2.0, per_sample=True)
        for dlt in deltas:
            if cfa:
                eq.use()
            shifted = torch.roll(hr, tuple(int(v) for v in dlt), dims=(-2, -1))
            z = encode(degrade_sr4(shifted, degradation))
            d = (dlt[0] / factor, dlt[1] / factor)
            y = decode(sample(unet, z, sched, nfe, ot_ode, _shift_noises(noises, d))[0])
            mask = valid_mask(hr.shape[-2:], dlt, device=hr.device)
            spsnr.append(metrics.psnr(y, torch.roll(ref, tuple(int(v) for v in dlt), dims=(-2, -1)), mask,
                                      peak=2.0, per_sample=True))
            back.append(torch.roll(y, tuple(-int(v) for v in dlt), dims=(-2, -1)))
            common = common * torch.roll(mask, tuple(-int(v) for v in dlt), dims=(-2, -1))
    # against HR on the region that no shift wrapped around: a fixed region, so an exactly equivariant model has
    # the same PSNR at every shift (flicker 0)
    psnr_hr = [metrics.psnr(y, hr, common, peak=2.0, per_sample=True) for y in back]
    return {"spsnr": torch.stack(spsnr), "psnr_hr": torch.stack(psnr_hr), "psnr_hr_ref": ref_hr}


class PointwiseLinear(nn.Module):
    """Positive control: a 1x1 convolution whose output is scaled by a function of the timestep. Linear and pointwise,
    so it commutes with every Fourier shift; the whole sampler (linear in x and the noises) then does too."""

    def __init__(self, channels: int = 4, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.eye(channels, device="cpu")
                                   + 0.1 * torch.randn(channels, channels, generator=g, device="cpu"))

    def forward(self, x, t):
        scale = 1 + t.to(x.dtype).view(-1, 1, 1, 1) / 1000
        return SimpleNamespace(sample=scale * torch.einsum("oc,bchw->bohw", self.weight, x))


class ZeroNet(nn.Module):
    """The identity control: a "network" that always outputs zeros. Then x0_hat = x_n at every step, and the OT-ODE
    sampler (``ot_ode=True``) mixes x_n only with itself, so ``sample`` returns x1 unchanged for any ``nfe``. Run
    through a shift protocol with a VAE's codec it measures the decoded degraded latent: what the input and the VAE
    give before any SR network acts (or, fed the clean latent, the VAE's ceiling)."""

    def forward(self, x, t):
        return SimpleNamespace(sample=torch.zeros_like(x))
