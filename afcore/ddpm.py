"""The diffusion process of the Config A-E study: the DDPM scheduler (linear betas 1e-4..0.02, T = 1000), Ho et
al.'s epsilon loss, DDIM and the reference's ancestral sampler, and Config E's progressive rotation during sampling.

Taught by notebooks 12_configs_train and 13_configs_eval; the U-Net it trains and samples is
``afcore.config_unet.ConfigUNet``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from afcore import signal


def make_scheduler(kind: str = "ddpm", num_train_timesteps: int = 1000):
    """diffusers DDPM scheduler with the paper's linear betas 1e-4..0.02 (or DDIM on the same schedule)."""
    from diffusers import DDIMScheduler, DDPMScheduler

    kwargs = dict(num_train_timesteps=num_train_timesteps, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    if kind == "ddpm":
        return DDPMScheduler(**kwargs)
    if kind == "ddim":
        return DDIMScheduler(**kwargs, clip_sample=True)
    raise ValueError(f"scheduler must be 'ddpm' or 'ddim', got {kind!r}")


def ddpm_loss(model, x0: torch.Tensor, scheduler, generator: torch.Generator | None = None):
    """Ho et al.'s epsilon loss (Algorithm 1) at timesteps drawn uniformly from 1..T-1, as the reference code does.

    Timesteps and noise are drawn on ``x0``'s device (pass a ``generator`` on that device for a seeded run)."""
    if generator is not None and generator.device != x0.device:
        raise ValueError(f"generator is on {generator.device} but x0 on {x0.device}: draw the noise where it is used "
                         "(afcore.device.make_generator(seed, device))")
    t = torch.randint(1, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=generator, device=x0.device)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    noisy = scheduler.add_noise(x0, noise, t)
    return F.mse_loss(model(noisy, t), noise)


ROTATIONS = ("spline-wrap", "fourier")


def rotate_step(x: torch.Tensor, degrees: float, rotation: str = "spline-wrap", boundary: str = "zeros"):
    """One Config E rotation of ``x_t``, counter-clockwise as displayed.

    ``"spline-wrap"`` is the reference's: cubic B-spline interpolation (``scipy.ndimage.rotate``, order 3) whose
    samples outside the grid wrap around, so no zeros enter the noisy image; it runs on the CPU, as in the reference
    (one round trip per step). ``"fourier"``: our band-limited three-shear rotation on the device, with ``boundary``
    padding (``zeros`` writes zeros into the corners of x_t at every step)."""
    if rotation == "spline-wrap":
        import scipy.ndimage

        out = scipy.ndimage.rotate(x.detach().cpu().double().numpy(), degrees, axes=(-2, -1), reshape=False,
                                   mode="grid-wrap", order=3)
        return torch.from_numpy(out).to(x.device, x.dtype)
    if rotation == "fourier":
        return signal.rotate(x, degrees, boundary=boundary)
    raise ValueError(f"rotation must be one of {list(ROTATIONS)}, got {rotation!r}")


@torch.no_grad()
def sample(model, noise: torch.Tensor, steps: int = 50, kind: str = "ddim", rotate_to: float = 0.0,
           boundary: str = "zeros", eta: float = 0.0, generator: torch.Generator | None = None,
           progress: bool = False, rotation: str = "fourier") -> torch.Tensor:
    """Reverse diffusion from ``noise`` with a diffusers scheduler (DDIM by default, ``steps`` steps).

    With ``rotate_to`` = phi (degrees), Config E's progressive rotation: after every reverse step x_t is rotated by
    phi/steps (``rotate_step``), so the sample ends rotated by phi. ``rotate_to=0`` is the plain sampler. The
    reference protocol (999 ancestral steps, spline rotation) is ``ancestral_sample``."""
    scheduler = make_scheduler(kind)
    scheduler.set_timesteps(steps, device=noise.device)
    x = noise
    per_step = rotate_to / len(scheduler.timesteps)
    for t in tqdm(scheduler.timesteps, disable=not progress, desc="sampling"):
        eps = model(x, t.expand(x.shape[0]))
        if kind == "ddim":
            x = scheduler.step(eps, t, x, eta=eta, generator=generator).prev_sample
        else:
            x = scheduler.step(eps, t, x, generator=generator).prev_sample
        if per_step:
            x = rotate_step(x, per_step, rotation, boundary)
    return x.clamp(-1, 1)


@torch.no_grad()
def ancestral_sample(model, noise: torch.Tensor, generator: torch.Generator, num_train_timesteps: int = 1000,
                     rotate_to: float = 0.0, rotation: str = "spline-wrap", boundary: str = "zeros",
                     progress: bool = False) -> torch.Tensor:
    """The reference code's sampler (Ho et al. Algorithm 2) and its Config E rotation.

    Steps i = T-1 .. 1 (999 for T = 1000); x <- (x - (1 - a_i) / sqrt(1 - abar_i) eps) / sqrt(a_i) + sqrt(beta_i) z
    with z ~ N(0, I) drawn from ``generator`` on the device (z = 0 at i = 1). With ``rotate_to`` = phi, x is rotated
    by phi / T after every step (``rotate_step``; the reference: cubic spline, wrap-around), so the sample ends rotated
    by phi (T-1)/T. Returns the sample clamped to [-1, 1]."""
    if generator.device != noise.device:
        raise ValueError(f"generator is on {generator.device} but noise on {noise.device}")
    betas = torch.linspace(1e-4, 0.02, num_train_timesteps, device=noise.device, dtype=torch.float64)
    alphas = 1 - betas
    alpha_bar = torch.cumprod(alphas, 0)
    per_step = rotate_to / num_train_timesteps
    x = noise
    for i in tqdm(range(num_train_timesteps - 1, 0, -1), disable=not progress, desc="ancestral sampling"):
        eps = model(x, torch.full((x.shape[0],), i, device=x.device, dtype=torch.long))
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) if i > 1 else torch.zeros_like(x)
        mean = (x - ((1 - alphas[i]) / (1 - alpha_bar[i]).sqrt()).to(x.dtype) * eps) / alphas[i].sqrt().to(x.dtype)
        x = mean + betas[i].sqrt().to(x.dtype) * z
        if per_step:
            x = rotate_step(x, per_step, rotation, boundary)
    return x.clamp(-1, 1)


def applied_rotation(rotate_to: float, protocol: str, steps: int, num_train_timesteps: int = 1000) -> float:
    """The total angle a Config E run applies: phi for our DDIM protocol, phi (T-1)/T for the reference's."""
    if protocol == "reference":
        return rotate_to * (num_train_timesteps - 1) / num_train_timesteps
    if protocol == "ddim":
        return rotate_to
    raise ValueError(f"rotation_protocol must be 'reference' or 'ddim', got {protocol!r}")
