"""Latent diffusion for AF-LDM (taught in notebooks/30_af_ldm.py; equations in docs/af-ldm.md).

- ``latent_unet``: an unconditional diffusers ``UNet2DModel`` for VAE latents (attention at the low resolution and in
  the mid block, so that equivariant attention matters), made alias-free with ``afcore.surgery.make_alias_free``.
- ``make_scheduler``: AF-LDM's noise schedule by default (scaled-linear betas 0.0015..0.0195, T = 1000,
  steps_offset 1, the latent-diffusion schedule its scheduler config uses); Stable Diffusion's 0.00085..0.012 is the
  option ``schedule="sd"``.
- ``ldm_loss``: epsilon loss + the U-Net equivariance loss: same timestep for both passes; the noisy latent is
  shifted circularly by a multiple of 1/8 latent pixel (|d| <= 0.375 of the size); the shifted pass uses equivariant
  attention whose keys/values come from the unshifted pass; the squared error is averaged over the valid mask only.
  Stop-gradient (``stop_grad``): "none" (the reference's default: gradients through both passes), "shifted" (the
  reference's ``use_stop_grad``: the shifted prediction f(T x) is detached, the loss trains through T f(x)) or
  "target" (T f(x) and the attention's stored keys/values detached, the usual consistency-loss side).
  Cross-frame attention's stored keys/values (``cfa_detach``, default True): the self-attention inputs recorded in
  the unshifted pass are detached, as the reference's ``CrossFrameAttnProcessor`` stores ``hidden_states.detach()``,
  so the shifted pass's keys/values carry no gradient into the unshifted pass; ``cfa_detach=False`` (this
  workbook's earlier behaviour) lets gradient flow through them too, i.e. the equivariance term also trains the
  unshifted pass's attention inputs to be good keys/values for the shifted queries. "target" detaches them either
  way.
- ``sample`` / ``shift_consistency``: DDIM sampling, optionally anchored on a reference run with cross-frame
  attention (CFA), and the per-sample latent / image SPSNR of AF-LDM's Table 3 and Figures 5-6.

Latents are scaled to unit standard deviation (``latent_scale``, SD's 0.18215 plays that role) before diffusion.
Everything random is drawn from a ``torch.Generator`` on the tensors' device.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from afcore import metrics
from afcore.attention import EquivariantAttention, use_sdpa
from afcore.signal import fourier_shift, shift as crop_shift, valid_mask

__all__ = ["sample_latent_shift", "equivariance_loss", "latent_unet", "make_scheduler", "encode_latents",
           "ldm_loss", "sample", "shift_consistency", "SCHEDULES", "STOP_GRADS", "NOISE_SHIFTS"]

STOP_GRADS = ("none", "shifted", "target")
NOISE_SHIFTS = ("circular", "crop")
# (beta_start, beta_end) of the scaled-linear schedules, T = 1000, steps_offset 1
SCHEDULES = {"af-ldm": (0.0015, 0.0195), "sd": (0.00085, 0.012)}


def sample_latent_shift(size, generator=None, max_frac: float = 0.375, step: float = 1 / 8):
    """Random (dy, dx) in latent pixels: multiples of ``step`` with |d| <= max_frac * size (drawn on the
    generator's device)."""
    if not 0 <= max_frac < 1:
        raise ValueError(f"max_frac must be in [0, 1), got {max_frac}")
    device = generator.device if generator is not None else None
    out = []
    for n in size:
        k = int(max_frac * n / step)
        out.append(step * int(torch.randint(-k, k + 1, (1,), generator=generator, device=device)))
    return tuple(out)


def _check_stop_grad(stop_grad):
    if stop_grad not in STOP_GRADS:
        raise ValueError(f"stop_grad (ldm_stop_grad) must be one of {list(STOP_GRADS)}, got {stop_grad!r}")


def _masked_shift_error(out, ref, d, stop_grad):
    """Masked MSE of the shifted pass ``out`` = f(T_d x) against T_d ``ref`` (ref = f(x)), with the stop-gradient
    on the side ``stop_grad`` names."""
    _check_stop_grad(stop_grad)
    target = fourier_shift(ref.detach() if stop_grad == "target" else ref, d)
    out = out.detach() if stop_grad == "shifted" else out
    mask = valid_mask(out.shape[-2:], d, device=out.device).to(out.dtype)
    err = (out - target) ** 2 * mask
    return err.sum() / (mask.sum() * out.shape[0] * out.shape[1]).clamp_min(1), mask


def equivariance_loss(unet, x_t, t, d, stop_grad: str = "none", cfa: bool = True, cfa_detach: bool = True):
    """Masked MSE between unet(T_d x_t) and T_d unet(x_t); returns (loss, mask).

    ``unet(x, t)`` must return an object with ``.sample`` (diffusers). ``cfa=True`` anchors the
    shifted pass's attention on the unshifted pass (cross-frame attention). ``stop_grad`` and ``cfa_detach``
    (default True: the stored keys/values carry no gradient, as in the reference): see the module doc.
    """
    _check_stop_grad(stop_grad)
    ref, out = _paired_passes(unet, x_t, t, d, cfa, stop_grad, cfa_detach)
    return _masked_shift_error(out, ref, d, stop_grad)


def _check_cfa_detach(cfa_detach):
    if not isinstance(cfa_detach, bool):
        raise ValueError(f"cfa_detach must be True or False, got {cfa_detach!r}")


def _paired_passes(unet, x_t, t, d, cfa, stop_grad, cfa_detach: bool = True):
    """unet(x_t) and unet(T_d x_t) at the same timestep; with ``cfa`` the second anchored on the first (its stored
    keys/values detached when ``cfa_detach`` -- the reference -- or when the target side is stopped)."""
    _check_cfa_detach(cfa_detach)
    with EquivariantAttention(unet, detach=cfa_detach or stop_grad == "target") as eq:
        eq.record() if cfa else eq.off()
        ref = unet(x_t, t).sample
        if cfa:
            eq.use()
        return ref, unet(fourier_shift(x_t, d), t).sample


def latent_unet(channels=(32, 64), latent_channels: int = 4, sample_size: int = 8, groups: int = 8,
                head_dim: int = 32, layers_per_block: int = 1):
    """UNet2DModel with plain blocks at full latent resolution and attention blocks below it (plus the mid block)."""
    from diffusers import UNet2DModel

    n = len(channels)
    if n < 2:
        raise ValueError(f"ldm_channels needs at least 2 levels, got {list(channels)}")
    unet = UNet2DModel(sample_size=sample_size, in_channels=latent_channels, out_channels=latent_channels,
                       block_out_channels=tuple(channels), layers_per_block=layers_per_block,
                       down_block_types=("DownBlock2D",) + ("AttnDownBlock2D",) * (n - 1),
                       up_block_types=("AttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
                       norm_num_groups=groups, attention_head_dim=min(head_dim, min(channels[1:])))
    use_sdpa(unet)  # diffusers' SDPA processor on every attention layer (its default where torch has SDPA)
    return unet


def make_scheduler(kind: str = "ddim", num_train_timesteps: int = 1000, schedule: str = "af-ldm"):
    """DDIM or DDPM scheduler with a scaled-linear beta schedule, steps_offset 1, no x0 clipping (latents are not
    in [-1, 1]).

    ``schedule="af-ldm"`` (default): betas 0.0015..0.0195, AF-LDM's scheduler config (the latent-diffusion
    schedule of its FFHQ model); ``"sd"``: Stable Diffusion's 0.00085..0.012 (less noise at every step).
    """
    from diffusers import DDIMScheduler, DDPMScheduler

    if schedule not in SCHEDULES:
        raise ValueError(f"schedule (ldm_schedule) must be one of {list(SCHEDULES)}, got {schedule!r}")
    beta_start, beta_end = SCHEDULES[schedule]
    kwargs = dict(num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
                  beta_schedule="scaled_linear", clip_sample=False, steps_offset=1)
    if kind == "ddim":
        return DDIMScheduler(**kwargs, set_alpha_to_one=False)
    if kind == "ddpm":
        return DDPMScheduler(**kwargs)
    raise ValueError(f"scheduler must be 'ddim' or 'ddpm', got {kind!r}")


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor, batch: int = 250) -> torch.Tensor:
    """Posterior means of ``images`` (in [-1, 1]) under ``vae``, unscaled."""
    vae.eval()
    return torch.cat([vae.encode(images[i:i + batch]).latent_dist.mean for i in range(0, len(images), batch)])


def _same_device(a: torch.device, b: torch.device) -> bool:
    a, b = torch.device(a), torch.device(b)
    if a.type != b.type:
        return False
    if a.type == "cuda" and (a.index is None or b.index is None):  # "cuda" is the current CUDA device
        current = torch.cuda.current_device()
        return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)
    return a.index == b.index or a.index is None or b.index is None


def ldm_loss(unet, z0, scheduler, generator: torch.Generator, eq_weight: float = 0.0, cfa: bool = True,
             stop_grad: str = "none", max_frac: float = 0.375, cfa_detach: bool = True):
    """Epsilon MSE + eq_weight * U-Net equivariance loss; returns (loss, logs).

    ``cfa_detach`` (default True, the reference): the CFA keys/values stored from the unshifted pass carry no
    gradient; False lets the equivariance term's gradient flow through them as well (see the module doc).

    ``generator`` must live on z0's device (the model's): it draws the timesteps, the noise and the shift, in that
    order, where they are used (a generator on another device raises ValueError). The unshifted pass is shared by
    both terms (it is the CFA reference when ``cfa``); one shift per batch. ``logs`` holds detached 0-d tensors
    (``train_loop`` reads them back in batches: no device synchronisation per step).
    """
    _check_stop_grad(stop_grad)
    _check_cfa_detach(cfa_detach)
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"ldm_loss: generator must be a torch.Generator on the batch's device, got {generator!r}")
    if not _same_device(generator.device, z0.device):
        raise ValueError(f"ldm_loss: generator is on {generator.device} but the batch z0 (and the model) is on "
                         f"{z0.device}: the timesteps, noise and shift are drawn where they are used, so build the "
                         f"generator there, e.g. afcore.utils.make_generator(seed, z0.device)")
    t = torch.randint(0, scheduler.config.num_train_timesteps, (z0.shape[0],), generator=generator, device=z0.device)
    noise = torch.randn(z0.shape, generator=generator, device=z0.device, dtype=z0.dtype)
    x_t = scheduler.add_noise(z0, noise, t)
    if eq_weight <= 0:
        diffusion = F.mse_loss(unet(x_t, t).sample, noise)
        return diffusion, {"diffusion": diffusion.detach()}
    d = sample_latent_shift(z0.shape[-2:], generator, max_frac=max_frac)
    pred, shifted = _paired_passes(unet, x_t, t, d, cfa, stop_grad, cfa_detach)
    diffusion = F.mse_loss(pred, noise)
    equiv, _ = _masked_shift_error(shifted, pred, d, stop_grad)
    return diffusion + eq_weight * equiv, {"diffusion": diffusion.detach(), "equivariance": equiv.detach()}


@torch.no_grad()
def sample(unet, z_T: torch.Tensor, steps: int = 20, trajectory: bool = False, progress: bool = False,
           schedule: str = "af-ldm"):
    """Deterministic DDIM (eta 0) from ``z_T`` with the training ``schedule``; with ``trajectory`` also the list of
    x_t after every step."""
    scheduler = make_scheduler("ddim", schedule=schedule)
    scheduler.set_timesteps(steps, device=z_T.device)
    x, traj = z_T, []
    for t in tqdm(scheduler.timesteps, disable=not progress, desc="DDIM", leave=False):
        eps = unet(x, t.expand(x.shape[0])).sample
        x = scheduler.step(eps, t, x, eta=0.0).prev_sample
        if trajectory:
            traj.append(x)
    return (x, traj) if trajectory else x


@torch.no_grad()
def shift_consistency(unet, z_T: torch.Tensor, shifts, steps: int = 20, cfa: bool = True, decode=None,
                      factor: int = 8, schedule: str = "af-ldm", noise_shift: str = "circular",
                      latent_peak: str = "range") -> dict:
    """Sample from z_T and from T_d z_T for every d in ``shifts`` (shifts in latent pixels).

    ``noise_shift`` says how the initial noise is shifted (the step count is ``steps``; AF-LDM's Table 3 uses 50):
    ``"circular"`` (default): a circular Fourier shift (a circularly shifted white noise is still white noise) and
    the shifted run's z_0 decoded as it is; ``"crop"``: the reference's Table 3 protocol: the noise shifted with the
    cropped Fourier shift (``afcore.signal.shift(mode="crop")``, AF-LDM's ``ideal_crop``: the uncovered border is
    zero, the seam row / column of a negative fractional shift kept) and the shifted run's z_0 multiplied by the
    valid mask before it is decoded (the reference decodes ``latent * mask``). Either way the PSNRs are taken on the
    valid mask of the shift, so the two protocols differ only in what the shifted run starts from and decodes.
    ``latent_peak``: the latent PSNR's peak, ``"range"`` (default: the target's per-sample range on the valid mask,
    this workbook's convention) or ``"joint-range"`` (the reference's ``mask_psnr``: max - min over both masked
    latents, here per sample; the reference's script shifts one latent at a time, so per sample is its batch).

    With ``cfa`` each shifted run's attention takes keys/values from the one unshifted run, layer by layer and step by
    step. Returns tensors indexed [shift, sample]: ``latent`` (per-sample PSNR of the shifted run's z_0 against T_d
    of the unshifted run's z_0 on the shift's non-wrapped region, peak = the target's per-sample dynamic range there
    by default)
    and ``per_step`` [shift, step, sample] (the same after every DDIM step); with ``decode`` also ``image`` (decoded
    outputs, image shift factor * d, peak 2), ``reference`` (decoded unshifted run) and ``frames`` [shift, sample,
    C, H, W] (decoded shifted runs).
    """
    if not len(shifts):
        raise ValueError("shifts must list at least one (dy, dx)")
    if latent_peak not in metrics.PEAKS:
        raise ValueError(f"latent_peak must be one of {list(metrics.PEAKS)}, got {latent_peak!r}")
    if noise_shift not in NOISE_SHIFTS:
        raise ValueError(f"noise_shift must be one of {list(NOISE_SHIFTS)}, got {noise_shift!r}")
    context = EquivariantAttention(unet) if cfa else contextlib.nullcontext()
    latent, per_step, image, frames = [], [], [], []
    with context as eq:
        if cfa:
            eq.record()
        ref, ref_traj = sample(unet, z_T, steps, trajectory=True, schedule=schedule)
        image_ref = decode(ref) if decode is not None else None
        for d in shifts:
            if cfa:
                eq.use()
            z_d = fourier_shift(z_T, d) if noise_shift == "circular" else crop_shift(z_T, d, mode="crop")[0]
            out, out_traj = sample(unet, z_d, steps, trajectory=True, schedule=schedule)
            mask = valid_mask(z_T.shape[-2:], d, device=z_T.device)
            latent.append(metrics.psnr(out, fourier_shift(ref, d), mask, peak=latent_peak, per_sample=True))
            per_step.append(torch.stack([metrics.psnr(o, fourier_shift(r, d), mask, peak=latent_peak, per_sample=True)
                                         for r, o in zip(ref_traj, out_traj)]))
            if decode is not None:
                image_out = decode(out if noise_shift == "circular" else out * mask.to(out.dtype))
                di = (d[0] * factor, d[1] * factor)
                image_mask = valid_mask(image_ref.shape[-2:], di, device=z_T.device)
                image.append(metrics.psnr(image_out, fourier_shift(image_ref, di), image_mask, peak=2.0,
                                          per_sample=True))
                frames.append(image_out)
    result = {"latent": torch.stack(latent), "per_step": torch.stack(per_step)}
    if decode is not None:
        result.update(image=torch.stack(image), reference=image_ref, frames=torch.stack(frames))
    return result
