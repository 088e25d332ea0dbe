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


class ConfigUNet(nn.Module):
    """The Config A-D U-Net. ``base`` channels at full resolution, doubling per level for ``levels`` levels
    (the reference: base 64, 3 levels, attention after every down/up block)."""

    def __init__(self, config: str = "A", in_channels: int = 1, base: int = 32, levels: int = 3,
                 attention: bool = True, emb_dim: int = 256, filter_method: str = "kaiser"):
        super().__init__()
        if levels < 1:
            raise ValueError(f"levels must be >= 1, got {levels}")
        self.config, self.emb_dim = config, emb_dim
        self.init_args = dict(config=config, in_channels=in_channels, base=base, levels=levels, attention=attention,
                              emb_dim=emb_dim, filter_method=filter_method)
        cfg = parse_config(config, filter_method)
        widths = [base * 2 ** min(i, 2) for i in range(levels + 1)]  # 1x, 2x, 4x, 4x ... as the reference
        self.inc = DoubleConv(in_channels, widths[0], cfg)
        self.downs = nn.ModuleList(Down(widths[i], widths[i + 1], cfg, emb_dim) for i in range(levels))
        self.down_attn = nn.ModuleList(SelfAttention(widths[i + 1]) if attention else nn.Identity()
                                       for i in range(levels))
        deep = widths[-1]
        self.bottleneck = nn.Sequential(DoubleConv(deep, deep * 2, cfg), DoubleConv(deep * 2, deep * 2, cfg),
                                        DoubleConv(deep * 2, deep, cfg))
        self.ups = nn.ModuleList()
        self.up_attn = nn.ModuleList()
        for i in reversed(range(levels)):
            out = widths[i] if i > 0 else widths[0]
            self.ups.append(Up(widths[i + 1] + widths[i], out, cfg, emb_dim))
            self.up_attn.append(SelfAttention(out) if attention and i > 0 else nn.Identity())
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
    """Ho et al.'s epsilon loss at uniformly drawn timesteps (Algorithm 1).

    Timesteps and noise are drawn on ``x0``'s device (pass a ``generator`` on that device for a seeded run)."""
    if generator is not None and generator.device != x0.device:
        raise ValueError(f"generator is on {generator.device} but x0 on {x0.device}: draw the noise where it is used "
                         "(afcore.utils.make_generator(seed, device))")
    t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=generator, device=x0.device)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    noisy = scheduler.add_noise(x0, noise, t)
    return F.mse_loss(model(noisy, t), noise)


@torch.no_grad()
def sample(model, noise: torch.Tensor, steps: int = 50, kind: str = "ddim", rotate_to: float = 0.0,
           boundary: str = "zeros", eta: float = 0.0, generator: torch.Generator | None = None,
           progress: bool = False) -> torch.Tensor:
    """Reverse diffusion from ``noise``; with ``rotate_to`` = phi (degrees), Config E's progressive rotation:
    after every reverse step x_t is rotated by phi/steps (band-limited Fourier rotation, ``boundary`` padding), so
    the sample ends rotated by phi. ``rotate_to=0`` is the plain sampler."""
    scheduler = make_scheduler(kind)
    scheduler.set_timesteps(steps)
    x = noise
    per_step = rotate_to / len(scheduler.timesteps)
    for t in tqdm(scheduler.timesteps, disable=not progress, desc="sampling"):
        eps = model(x, torch.full((x.shape[0],), int(t), device=x.device))
        if kind == "ddim":
            x = scheduler.step(eps, t, x, eta=eta, generator=generator).prev_sample
        else:
            x = scheduler.step(eps, t, x, generator=generator).prev_sample
        if per_step:
            x = signal.rotate(x, per_step, boundary=boundary)
    return x.clamp(-1, 1)


def save_unet(model: ConfigUNet, path) -> None:
    from afcore.utils import _atomic_write

    state = {"init_args": model.init_args, "state_dict": model.state_dict()}
    _atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_unet(path) -> ConfigUNet:
    state = torch.load(path, map_location="cpu", weights_only=False)
    model = ConfigUNet(**state["init_args"])
    model.load_state_dict(state["state_dict"])
    return model.eval()
