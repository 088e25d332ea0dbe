"""Config A-E: the DDPM U-Net of Anjum et al. and its alias-free variants, the paper's table, save and load.

Taught by notebook 12_configs_train (the diffusion process that trains and samples it is ``afcore.ddpm``). Config
names follow the paper's table:

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
from torch import nn

from afcore import layers

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


def save_unet(model: ConfigUNet, path) -> None:
    from afcore.utils import save_checkpoint

    save_checkpoint({"init_args": model.init_args, "state_dict": model.state_dict()}, path)


def load_unet(path) -> ConfigUNet:
    from afcore.utils import load_checkpoint

    state = load_checkpoint(path, "a Config U-Net checkpoint", "configs_train")
    model = ConfigUNet(**state["init_args"])
    model.load_state_dict(state["state_dict"])
    return model.eval()
