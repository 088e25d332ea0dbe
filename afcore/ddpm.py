"""Config A-E: the DDPM U-Net of Anjum et al. and its alias-free variants, training loss, and (rotating) sampling.

Taught by notebooks 12_configs_train and 13_configs_eval. Config names follow the paper's table:

- ``A``: baseline U-Net (DoubleConv = conv-GroupNorm-GELU x2 with residuals, Down = MaxPool + DoubleConv,
  Up = bilinear + DoubleConv, 4-head self-attention, sinusoidal time embedding of 256).
- ``B-<beta>[N]``: max-pool -> low-pass + stride 2, bilinear -> zero insertion + low-pass (gain 4, which the
  reference code omits).
- ``C-<beta>[N]``: every GELU wrapped as x2 up / GELU / low-pass + down (filtered nonlinearity).
- ``D-<beta>[N]``: B and C together.

The filter is the 3x3 radial jinc with w_c = pi/2 (``signal.lowpass_filter(3, 0.5, radial=True)``), Kaiser
``beta`` in {0, 1, 2}, normalised to sum 1 when the name ends in ``N``. Alias-free variants add no parameters.
"""
from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from afcore import layers, signal

# Anjum et al.'s table (the reference repository's README): Inception IS / FID / KID x100, 2,000 samples of the
# 999-step ancestral sampler, single runs, CIFAR-10 / MNIST-M / MNIST at 32 px.
PAPER_TABLE = {
    "cifar10": {"A": (4.54, 98.77, 5.97), "B-0": (4.71, 94.23, 5.44), "C-0": (3.75, 129.42, 7.92),
                "D-0": (4.33, 97.44, 6.67), "B-1": (4.63, 121.45, 6.90), "C-1": (3.56, 138.88, 10.47),
                "D-1": (4.32, 108.06, 7.42), "B-1N": (4.63, 125.71, 6.64), "C-1N": (3.99, 107.37, 6.96),
                "D-1N": (4.51, 90.21, 5.54), "B-2N": (4.34, 109.96, 7.65), "C-2N": (4.34, 95.11, 6.70),
                "D-2N": (4.50, 102.28, 6.81)},
    "mnist_m": {"A": (3.76, 85.00, 6.23), "B-0": (3.39, 93.81, 7.37), "C-0": (3.11, 124.10, 9.43),
                "D-0": (3.33, 98.16, 7.56), "B-1": (3.40, 94.11, 7.40), "C-1": (3.48, 124.78, 7.86),
                "D-1": (3.44, 114.27, 8.35), "B-1N": (3.71, 100.91, 7.53), "C-1N": (3.69, 144.41, 9.69),
                "D-1N": (3.68, 108.14, 7.65), "B-2N": (4.14, 88.05, 5.47), "C-2N": (4.01, 101.59, 6.78),
                "D-2N": (3.99, 82.46, 5.35)},
    "mnist": {"A": (1.98, 9.61, 0.47), "B-0": (1.99, 10.23, 0.58), "C-0": (1.94, 14.07, 0.96),
              "D-0": (1.94, 14.37, 1.01), "B-1": (1.97, 11.00, 0.64), "C-1": (1.97, 14.76, 1.05),
              "D-1": (1.98, 16.08, 1.12), "B-1N": (1.97, 11.62, 0.72), "C-1N": (1.96, 15.95, 1.23),
              "D-1N": (1.96, 14.25, 0.97), "B-2N": (2.00, 12.78, 0.87), "C-2N": (1.97, 16.73, 1.29),
              "D-2N": (1.99, 11.19, 0.71)},
}
PAPER_DATASET = {"mnist": "mnist", "mnist_m": "mnist_m", "cifar10": "cifar10"}  # natural32 is not CIFAR-10

CONFIGS = ("A",) + tuple(f"{k}-{b}{n}" for b in (0, 1, 2) for n in ("", "N") for k in "BCD" if (b, n) != (2, ""))
PAPER_CONFIGS = ("A", "B-0", "C-0", "D-0", "B-1", "C-1", "D-1", "B-1N", "C-1N", "D-1N", "B-2N", "C-2N", "D-2N")


FILTERS = ("kaiser", "ideal")


def parse_config(name: str, filter_method: str = "kaiser") -> dict:
    """'D-1N' -> {'resample': True, 'activation': True, 'beta': 1.0, 'normalize': True, 'filter': 'kaiser'}.

    ``filter_method="ideal"`` swaps the 3x3 jinc for the ideal FFT low-pass (beta and N then have no effect)."""
    if filter_method not in FILTERS:
        raise ValueError(f"filter_method must be one of {list(FILTERS)}, got {filter_method!r}")
    if name == "A":
        return {"resample": False, "activation": False, "beta": None, "normalize": False, "filter": filter_method}
    m = re.fullmatch(r"([BCD])-([012])(N?)", name or "")
    if not m:
        raise ValueError(f"config must be one of {list(PAPER_CONFIGS)} (or B/C/D-<beta 0|1|2>[N]), got {name!r}")
    kind, beta, norm = m.groups()
    return {"resample": kind in "BD", "activation": kind in "CD", "beta": float(beta), "normalize": norm == "N",
            "filter": filter_method}


def _filter_kwargs(cfg: dict) -> dict:
    if cfg["filter"] == "ideal":
        return dict(method="ideal")
    return dict(method="kaiser", numtaps=3, beta=cfg["beta"], radial=True, normalize=cfg["normalize"],
                padding="zeros")


def _act(cfg: dict) -> nn.Module:
    if cfg["activation"]:
        return layers.FilteredActivation(nn.GELU(), up=2, **_filter_kwargs(cfg))
    return nn.GELU()


class DoubleConv(nn.Module):
    def __init__(self, cin, cout, cfg, mid=None, residual=False):
        super().__init__()
        mid = mid or cout
        self.residual = residual
        self.net = nn.Sequential(
            nn.Conv2d(cin, mid, 3, padding=1, bias=False), nn.GroupNorm(1, mid), _act(cfg),
            nn.Conv2d(mid, cout, 3, padding=1, bias=False), nn.GroupNorm(1, cout),
        )
        self.out_act = _act(cfg) if residual else None

    def forward(self, x):
        return self.out_act(x + self.net(x)) if self.residual else self.net(x)


class Down(nn.Module):
    def __init__(self, cin, cout, cfg, emb_dim):
        super().__init__()
        self.pool = layers.AliasFreeDownsample(2, **_filter_kwargs(cfg)) if cfg["resample"] else nn.MaxPool2d(2)
        self.convs = nn.Sequential(DoubleConv(cin, cin, cfg, residual=True), DoubleConv(cin, cout, cfg))
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, cout))

    def forward(self, x, t):
        x = self.convs(self.pool(x))
        return x + self.emb(t)[:, :, None, None]


class Up(nn.Module):
    def __init__(self, cin, cout, cfg, emb_dim):
        super().__init__()
        self.up = (layers.AliasFreeUpsample(2, **_filter_kwargs(cfg)) if cfg["resample"]
                   else nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True))
        self.convs = nn.Sequential(DoubleConv(cin, cin, cfg, residual=True), DoubleConv(cin, cout, cfg, cin // 2))
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, cout))

    def forward(self, x, skip, t):
        x = self.convs(torch.cat([skip, self.up(x)], dim=1))
        return x + self.emb(t)[:, :, None, None]


class SelfAttention(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.mha = nn.MultiheadAttention(channels, 4, batch_first=True)
        self.ff = nn.Sequential(nn.LayerNorm(channels), nn.Linear(channels, channels), nn.GELU(),
                                nn.Linear(channels, channels))

    def forward(self, x):
        b, c, h, w = x.shape
        seq = x.flatten(2).transpose(1, 2)
        normed = self.norm(seq)
        seq = seq + self.mha(normed, normed, normed, need_weights=False)[0]
        seq = seq + self.ff(seq)
        return seq.transpose(1, 2).reshape(b, c, h, w)


def timestep_embedding(t: torch.Tensor, dim: int = 256) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


ATTENTION = ("all", "below_full", "none")


class ConfigUNet(nn.Module):
    """The Config A-D U-Net. ``base`` channels at full resolution, doubling per level (capped at 4x) for ``levels``
    levels, self-attention after every down and up block, full resolution included.

    With ``levels=3`` this is the reference's network: encoder b, 2b, 4b, 4b; bottleneck 4b -> 8b -> 8b -> 4b;
    decoder ``Up(8b -> 2b)``, ``Up(4b -> b)``, ``Up(2b -> b)`` (each Up takes the up-sampled input concatenated with
    its skip and returns the next level's width), attention after each. The reference passes the image size as the
    width, so its 32 px models have b = 32 (5.9 M parameters for 3-channel images).

    ``attention``: ``"all"`` (the reference), ``"below_full"`` drops the full-resolution attention (on a CPU its
    1024-token softmax costs several times the rest of the step; the cpu profile uses it), ``"none"``."""

    def __init__(self, config: str = "A", in_channels: int = 1, base: int = 32, levels: int = 3,
                 attention: bool | str = "all", emb_dim: int = 256, filter_method: str = "kaiser"):
        super().__init__()
        if levels < 1:
            raise ValueError(f"levels must be >= 1, got {levels}")
        attention = {True: "all", False: "none"}.get(attention, attention)
        if attention not in ATTENTION:
            raise ValueError(f"attention must be one of {list(ATTENTION)}, got {attention!r}")
        self.config, self.emb_dim = config, emb_dim
        self.init_args = dict(config=config, in_channels=in_channels, base=base, levels=levels, attention=attention,
                              emb_dim=emb_dim, filter_method=filter_method)
        cfg = parse_config(config, filter_method)
        widths = [base * 2 ** min(i, 2) for i in range(levels + 1)]  # 1x, 2x, 4x, 4x ... as the reference
        self.inc = DoubleConv(in_channels, widths[0], cfg)
        self.downs = nn.ModuleList(Down(widths[i], widths[i + 1], cfg, emb_dim) for i in range(levels))
        self.down_attn = nn.ModuleList(SelfAttention(widths[i + 1]) if attention != "none" else nn.Identity()
                                       for i in range(levels))
        deep = widths[-1]
        self.bottleneck = nn.Sequential(DoubleConv(deep, deep * 2, cfg), DoubleConv(deep * 2, deep * 2, cfg),
                                        DoubleConv(deep * 2, deep, cfg))
        self.ups = nn.ModuleList()
        self.up_attn = nn.ModuleList()
        width_in = deep
        for i in reversed(range(levels)):
            out = widths[i - 1] if i > 0 else widths[0]
            self.ups.append(Up(width_in + widths[i], out, cfg, emb_dim))
            full_res = i == 0
            use = attention == "all" or (attention == "below_full" and not full_res)
            self.up_attn.append(SelfAttention(out) if use else nn.Identity())
            width_in = out
        self.outc = nn.Conv2d(widths[0], in_channels, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = timestep_embedding(t, self.emb_dim)
        skips = [self.inc(x)]
        h = skips[0]
        for down, attn in zip(self.downs, self.down_attn):
            h = attn(down(h, emb))
            skips.append(h)
        h = self.bottleneck(skips.pop())
        for up, attn in zip(self.ups, self.up_attn):
            h = attn(up(h, skips.pop(), emb))
        return self.outc(h)


# ------------------------------------------------------------------------------------------- diffusion
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
                         "(afcore.utils.make_generator(seed, device))")
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


def save_unet(model: ConfigUNet, path) -> None:
    from afcore.utils import _atomic_write

    state = {"init_args": model.init_args, "state_dict": model.state_dict()}
    _atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_unet(path) -> ConfigUNet:
    from pathlib import Path

    if not Path(path).exists():
        raise FileNotFoundError(f"{path} not found: run the configs_train stage first (`dvc repro configs_train`)")
    state = torch.load(path, map_location="cpu", weights_only=False)
    model = ConfigUNet(**state["init_args"])
    model.load_state_dict(state["state_dict"])
    return model.eval()
