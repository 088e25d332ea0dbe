"""YOSO-style one-step normal estimation on procedural scenes (taught in notebooks/60_normals.py; docs/normals.md).

Scenes (ground truth at every sub-pixel offset):

- ``random_scene(generator, texture, n)``: a batch of scene descriptions drawn from a seeded generator. A height field
  ``h(p) = sum_k a_k exp(-|p - c_k|^2 / (2 s_k^2)) + sum_m r_m cos(2 pi <g_m, p> + phi_m) + <b, p>`` (3-8 Gaussian
  bumps, s in [2, 8] px, ripples |g| <= 0.15 cycles/px, a ramp), an albedo that is a band-limited sum of coloured
  sinusoids (|g| <= 0.25 cycles/px for ``"smooth"``, <= 0.45 for ``"sharp"``) and a light at 30-70 deg elevation
  from the upper left by default (``light_azimuth``).
- ``render(scene, size, offset)``: half-Lambert shading ``I = albedo * (0.3 + 0.7 (n.l + 1) / 2)`` and the analytic
  normals ``n = (-dh/dx, +dh/dy, 1) / norm`` (channels: x right, y up, z toward the viewer; rows grow downwards, so
  "up" is -y), both evaluated at ``p - offset`` (the content moves by ``offset``: exact fractional shifts) on a
  ``supersample``-times finer grid and box-averaged (normals renormalised after averaging). Image in [-1, 1].

Model (``yoso_models`` / ``YOSO``): a diffusers ``UNet2DConditionModel`` (cross-attention fed a learned one-token
"empty prompt") and a ``ControlNetModel`` made from it whose conditioning embedding is a zero-initialised
``Conv2d(4, C0, 3, padding=1)`` on the image's VAE latent (AF-YOSO feeds the latent, not pixels). One pass at
t = T - 1 with a zero sample predicts the clean normal latent (x0 target). The alias-free version applies
``afcore.surgery.make_alias_free`` to both networks; the 3x3 conditioning conv is shift-equivariant as it is (like
``conv_in``), so it is left unpatched. ``yoso_loss``: x0 MSE, sample = 0 with probability ``p_zero`` else N(0, I),
plus (AF) the equivariance loss with cross-frame attention over both networks, sample and condition shifted together.
``save_yoso`` / ``load_yoso`` round-trip a model (patch included); ``yoso_models(pretrained_unet=...)`` starts the
U-Net from a local folder or hub id (e.g. Stable Diffusion's ``unet`` subfolder).

Metrics: ``angular_error`` (degrees), ``normal_metrics`` (per image mean, median, share under 11.25/22.5/30 deg).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from afcore import ldm
from afcore.surgery import PATCH_FILE, make_alias_free, save_alias_free
from afcore.utils import save_torch

__all__ = ["NORMAL_CODES", "normals_to_image", "image_to_normals", "TEXTURES", "TRAIN_T", "random_scene", "height_and_gradient", "render", "angular_error", "normal_metrics", "yoso_models", "YOSO",
           "yoso_loss", "save_yoso", "load_yoso", "PointwiseControl"]

TEXTURES = {"smooth": 0.25, "sharp": 0.45}  # the albedo's highest frequency, cycles/px
TRAIN_T = ("fixed", "random")
N_BUMPS, N_RIPPLES, N_ALBEDO = 8, 2, 6


def _check(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def _uniform(shape, lo, hi, g, device):
    return lo + (hi - lo) * torch.rand(shape, generator=g, device=device, dtype=torch.float64)


def _frequencies(shape, fmax, g, device):
    """Random 2-D frequencies with |g| <= fmax (uniform radius and angle), shape (..., 2) as (gy, gx)."""
    r = _uniform(shape, 0.0, fmax, g, device)
    a = _uniform(shape, 0.0, 2 * math.pi, g, device)
    return torch.stack([r * torch.sin(a), r * torch.cos(a)], -1)


def random_scene(generator: torch.Generator, texture: str = "smooth", n: int = 1, size: int = 32,
                 light_azimuth=(90.0, 180.0), light_elevation=(30.0, 70.0), bump_scale: float = 1.0,
                 albedo_contrast: float = 1.0) -> dict:
    """``n`` random scenes (a dict of float64 tensors with leading dim n) on the generator's device; coordinates in
    output pixels, the bumps' centres spread a quarter frame beyond the borders so pans show new content.

    ``bump_scale`` multiplies the bumps' widths and heights (same slopes, wider features), ``albedo_contrast`` the
    albedo's amplitudes (same frequencies, less contrast against the shading), ``light_elevation`` is the range of
    the light's elevation in degrees (lower: more shading contrast). The same generator draws the same numbers
    whatever these are.

    ``light_azimuth`` (degrees, from x = right toward y = up): the range of the light's direction. A full circle
    makes the tilt of every normal unidentifiable (a bump lit from one side and a dent lit from the other give the
    same image, so the best estimate of n_x, n_y is 0); the default, light from the upper left, breaks that."""
    _check("texture (normals texture)", texture, TEXTURES)
    g, dev = generator, generator.device
    if not (bump_scale > 0 and 0 <= albedo_contrast <= 1):
        raise ValueError(f"bump_scale (normals_bump_scale) must be > 0 and albedo_contrast (normals_albedo_contrast) "
                         f"in [0, 1], got {bump_scale}, {albedo_contrast}")
    if not 0 <= light_elevation[0] <= light_elevation[1] <= 90:
        raise ValueError(f"light_elevation (normals_light_elevation) must be [low, high] degrees with 0 <= low <= "
                         f"high <= 90, got {list(light_elevation)}")
    count = torch.randint(3, N_BUMPS + 1, (n, 1), generator=g, device=dev)
    s = _uniform((n, N_BUMPS), 2.0, 8.0, g, dev) * bump_scale
    on = (torch.arange(N_BUMPS, device=dev)[None] < count).double()
    scene = {
        "centre": _uniform((n, N_BUMPS, 2), -0.25 * size, 1.25 * size, g, dev),
        "sigma": s,
        "amp": _uniform((n, N_BUMPS), -1.0, 1.0, g, dev) * s * on,  # slopes of order 0.6 at most
        "ripple_g": _frequencies((n, N_RIPPLES), 0.15, g, dev),
        "ripple_amp": _uniform((n, N_RIPPLES), 0.0, 0.3, g, dev),
        "ripple_phase": _uniform((n, N_RIPPLES), 0.0, 2 * math.pi, g, dev),
        "ramp": _uniform((n, 2), -0.3, 0.3, g, dev),
        "albedo_g": _frequencies((n, N_ALBEDO), TEXTURES[texture], g, dev),
        # colour amplitudes: |sum| <= 0.45 so the albedo stays in [0.05, 0.95] without clipping (band-limited)
        "albedo_amp": _uniform((n, N_ALBEDO, 3), -1.0, 1.0, g, dev) * (0.45 * albedo_contrast / N_ALBEDO),
        "albedo_phase": _uniform((n, N_ALBEDO), 0.0, 2 * math.pi, g, dev),
    }
    elev = _uniform((n,), math.radians(light_elevation[0]), math.radians(light_elevation[1]), g, dev)
    lo, hi = (math.radians(float(a)) for a in light_azimuth)
    if not lo <= hi <= lo + 2 * math.pi:
        raise ValueError(f"light_azimuth (normals_light_azimuth) must be [low, high] degrees with low <= high <= "
                         f"low + 360, got {list(light_azimuth)}")
    azim = _uniform((n,), lo, hi, g, dev)
    scene["light"] = torch.stack([torch.cos(elev) * torch.cos(azim), torch.cos(elev) * torch.sin(azim),
                                  torch.sin(elev)], -1)  # (x right, y up, z viewer), unit length
    return scene


def height_and_gradient(scene: dict, y: torch.Tensor, x: torch.Tensor):
    """h, dh/dy, dh/dx at points (y, x) (float64 tensors of shape (P,)); returns three (n, P) tensors. The
    point-wise reference of the fields `render` computes on its grid (tests compare them)."""
    y, x = y[None, :, None], x[None, :, None]  # (1, P, 1) against per-scene (n, 1, K)
    cy, cx = scene["centre"][..., 0][:, None], scene["centre"][..., 1][:, None]
    s2 = scene["sigma"][:, None] ** 2
    bump = scene["amp"][:, None] * torch.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * s2))
    h = bump.sum(-1)
    hy = (bump * -(y - cy) / s2).sum(-1)
    hx = (bump * -(x - cx) / s2).sum(-1)
    gy, gx = scene["ripple_g"][..., 0][:, None], scene["ripple_g"][..., 1][:, None]
    arg = 2 * math.pi * (gy * y + gx * x) + scene["ripple_phase"][:, None]
    r = scene["ripple_amp"][:, None]
    h = h + (r * torch.cos(arg)).sum(-1)
    hy = hy - (r * torch.sin(arg) * 2 * math.pi * gy).sum(-1)
    hx = hx - (r * torch.sin(arg) * 2 * math.pi * gx).sum(-1)
    by, bx = scene["ramp"][:, 0:1], scene["ramp"][:, 1:2]
    return h + by * y[..., 0] + bx * x[..., 0], hy + by, hx + bx


def _cos_sin(g, phase, ys, xs):
    """cos and sin of 2 pi <g, p> + phase on the grid ys x xs, (n, J, Hf, Wf) each, from 1-D factors (separable)."""
    ay = 2 * math.pi * g[..., 0, None] * ys + phase[..., None]  # (n, J, Hf)
    bx = 2 * math.pi * g[..., 1, None] * xs  # (n, J, Wf)
    cy, sy = ay.cos()[..., :, None], ay.sin()[..., :, None]
    cx, sx = bx.cos()[..., None, :], bx.sin()[..., None, :]
    return cy * cx - sy * sx, sy * cx + cy * sx


def _grid_fields(scene: dict, ys: torch.Tensor, xs: torch.Tensor):
    """dh/dy, dh/dx (n, Hf, Wf) and albedo (n, 3, Hf, Wf) on the grid ys x xs: the same fields as
    ``height_and_gradient`` (the point-wise reference), computed with separable factors."""
    cy, cx = scene["centre"][..., 0, None], scene["centre"][..., 1, None]  # (n, K, 1)
    s2 = scene["sigma"][..., None] ** 2
    ey = scene["amp"][..., None] * torch.exp(-(ys - cy) ** 2 / (2 * s2))  # (n, K, Hf)
    ex = torch.exp(-(xs - cx) ** 2 / (2 * s2))  # (n, K, Wf)
    hy = torch.einsum("nky,nkx->nyx", ey * -(ys - cy) / s2, ex)
    hx = torch.einsum("nky,nkx->nyx", ey, ex * -(xs - cx) / s2)
    _, sin = _cos_sin(scene["ripple_g"], scene["ripple_phase"], ys, xs)
    r = (scene["ripple_amp"][..., None, None] * sin * 2 * math.pi)  # (n, M, Hf, Wf)
    hy = hy - (r * scene["ripple_g"][..., 0, None, None]).sum(1) + scene["ramp"][:, 0, None, None]
    hx = hx - (r * scene["ripple_g"][..., 1, None, None]).sum(1) + scene["ramp"][:, 1, None, None]
    cos, _ = _cos_sin(scene["albedo_g"], scene["albedo_phase"], ys, xs)
    return hy, hx, 0.5 + torch.einsum("njyx,njc->ncyx", cos, scene["albedo_amp"])


def render(scene: dict, size: int = 32, offset=(0.0, 0.0), supersample: int = 4, dtype=torch.float32):
    """(image (n, 3, S, S) in [-1, 1], normals (n, 3, S, S) unit length) of ``scene`` moved by ``offset`` px."""
    if supersample < 1 or size < 1:
        raise ValueError(f"size and supersample must be >= 1, got {size}, {supersample}")
    dev = scene["amp"].device
    sub = (torch.arange(supersample, device=dev, dtype=torch.float64) + 0.5) / supersample - 0.5
    ax = (torch.arange(size, device=dev, dtype=torch.float64)[:, None] + sub[None]).reshape(-1)  # fine grid
    hy, hx, albedo = _grid_fields(scene, ax - float(offset[0]), ax - float(offset[1]))
    n = torch.stack([-hx, hy, torch.ones_like(hx)], 1)  # (n, 3, Hf, Wf): x right, y up (= -row), z viewer
    n = n / n.norm(dim=1, keepdim=True)
    lam = torch.einsum("ncyx,nc->nyx", n, scene["light"])[:, None]
    img = albedo * (0.3 + 0.7 * (lam + 1) / 2)

    def area(v):  # (n, C, Hf, Wf) on the fine grid -> (n, C, S, S) box average
        return v.reshape(v.shape[0], v.shape[1], size, supersample, size, supersample).mean((3, 5))

    normals = area(n)
    normals = normals / normals.norm(dim=1, keepdim=True)
    return (2 * area(img) - 1).to(dtype), normals.to(dtype)


def angular_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-pixel angle in degrees between ``pred`` and ``target`` (both normalised here; a zero vector counts as
    90 deg from anything), (n, 3, H, W) -> (n, H, W)."""
    if pred.shape != target.shape or pred.shape[-3] != 3:
        raise ValueError(f"pred and target must both be (n, 3, H, W), got {tuple(pred.shape)}, {tuple(target.shape)}")
    p = pred / pred.norm(dim=-3, keepdim=True).clamp_min(1e-8)
    q = target / target.norm(dim=-3, keepdim=True).clamp_min(1e-8)
    cos = (p * q).sum(-3).clamp(-1, 1)
    return torch.rad2deg(torch.arccos(cos.double())).to(pred.dtype)


def normal_metrics(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> dict:
    """Per-image mean and median angular error (deg) and % of pixels under 11.25 / 22.5 / 30 deg ((n,) tensors),
    over ``mask`` ((H, W) or (n, H, W), nonzero = counted) when given."""
    err = angular_error(pred, target)
    m = torch.ones_like(err, dtype=torch.bool) if mask is None else (mask > 0).expand_as(err)
    out = {"mean": [], "median": [], "under_11.25": [], "under_22.5": [], "under_30": []}
    for e, k in zip(err, m):
        v = e[k]
        out["mean"].append(v.mean())
        out["median"].append(v.median())
        for t in (11.25, 22.5, 30):
            out[f"under_{t:g}"].append(100 * (v < t).double().mean())
    return {k: torch.stack(v).double() for k, v in out.items()}


# --------------------------------------------------------------------------------- normal maps as VAE images
# How a normal map becomes a 3-channel image for the VAE. "rgb" (the reference's): the unit normal itself. "xy": the
# two tilt channels and a zero third channel; the decoder's output is turned back into a unit normal with
# n_z = sqrt(1 - n_x^2 - n_y^2) (normals face the viewer, n_z >= 0). Why "xy" exists: n_z sits near +1 everywhere,
# the saturated edge of the image range, which a small VAE trained on photographs reproduces badly. "xy2": the tilt
# channels doubled, (2 n_x, 2 n_y, n_x + n_y), clipped to [-1, 1]. Why: the tilts are small (|n_xy| ~ 0.3 on our
# scenes), so at gain 1 the VAE's own reconstruction error is large against them; doubling them uses more of the
# image range (clipping only tilts beyond 30 deg), and the third channel repeats their sum, because a VAE trained on
# photographs keeps what the channels share (brightness) better than what separates them (colour). Notebook 60
# measures the VAE ceiling of every code.
NORMAL_CODES = ("rgb", "xy", "xy2")
XY2_GAIN = 2.0


def normals_to_image(n: torch.Tensor, code: str = "rgb") -> torch.Tensor:
    """Unit normals (..., 3, H, W) -> the image the VAE encodes."""
    _check("code (normals_code)", code, NORMAL_CODES)
    xy = n[..., :2, :, :]
    if code == "rgb":
        return n
    if code == "xy":
        return torch.cat([xy, torch.zeros_like(n[..., 2:, :, :])], -3)
    return torch.cat([XY2_GAIN * xy, xy.sum(-3, keepdim=True)], -3).clamp(-1, 1)


def image_to_normals(x: torch.Tensor, code: str = "rgb") -> torch.Tensor:
    """A decoded image (..., 3, H, W) -> normals (unit length after ``angular_error``'s normalisation)."""
    _check("code (normals_code)", code, NORMAL_CODES)
    if code == "rgb":
        return x
    xy = x[..., :2, :, :] / (XY2_GAIN if code == "xy2" else 1.0)
    return torch.cat([xy, (1 - (xy ** 2).sum(-3, keepdim=True)).clamp_min(0).sqrt()], -3)


# ------------------------------------------------------------------------------------------------------ models
def _zero_conv(cin: int, cout: int) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, 3, padding=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def _controlnet(unet, latent_ch: int, zero_cond: bool = True):
    from diffusers import ControlNetModel

    cn = ControlNetModel.from_unet(unet, conditioning_channels=latent_ch)
    # diffusers adds controlnet_cond_embedding(cond) to conv_in(sample): a zero-initialised 3x3 conv on the image
    # latent there is AF-YOSO's identity embedding + conv_in2, without a subclass. zero_cond=False keeps PyTorch's
    # default (random) init instead: from scratch there is no pretrained U-Net to protect, and with both this conv
    # and the ControlNet's output convs at zero the condition gets no gradient until the output convs have grown
    # (ControlNet's slow start), which a few hundred steps do not outlast
    cn.controlnet_cond_embedding = (_zero_conv(latent_ch, unet.config.block_out_channels[0]) if zero_cond else
                                    nn.Conv2d(latent_ch, unet.config.block_out_channels[0], 3, padding=1))
    return cn


def _load_unet(source: str, param: str):
    from diffusers import UNet2DConditionModel

    local = Path(source).exists()
    sub = "unet" if (Path(source) / "unet").exists() or not local else None
    try:
        return UNet2DConditionModel.from_pretrained(source, subfolder=sub, local_files_only=local)
    except (OSError, ValueError) as e:
        raise RuntimeError(f"{param}={source!r} could not be loaded ({type(e).__name__}: {str(e)[:200]}). Offline, "
                           f"set {param} to a local folder holding a UNet2DConditionModel (save_pretrained layout, "
                           "directly or in a unet/ subfolder), or to \"\" to start from scratch.") from e


def yoso_models(channels=(32, 64), latent_ch: int = 4, cross_dim: int = 32, alias_free: bool = False,
                sample_size: int = 8, groups: int = 8, head_dim: int = 8, pretrained_unet: str = "",
                param: str = "normals_pretrained_unet", zero_cond: bool = True):
    """(unet, controlnet): a small ``UNet2DConditionModel`` (plain blocks at full latent resolution, cross-attention
    below and in the mid block) or, with ``pretrained_unet``, one loaded from a local folder / hub id, and the
    ControlNet copied from it with the latent conditioning conv (zero-initialised unless ``zero_cond`` is False);
    ``alias_free`` patches both."""
    from diffusers import UNet2DConditionModel

    if pretrained_unet:
        unet = _load_unet(pretrained_unet, param)
        latent_ch = unet.config.in_channels
    else:
        n = len(channels)
        if n < 2:
            raise ValueError(f"normals_channels needs at least 2 levels, got {list(channels)}")
        unet = UNet2DConditionModel(
            sample_size=sample_size, in_channels=latent_ch, out_channels=latent_ch, layers_per_block=1,
            block_out_channels=tuple(channels), norm_num_groups=groups, cross_attention_dim=cross_dim,
            attention_head_dim=head_dim, down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
            up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",))
    controlnet = _controlnet(unet, latent_ch, zero_cond)
    if alias_free:
        if getattr(unet, "_alias_free_patch", None) is None:
            make_alias_free(unet)
        make_alias_free(controlnet)
    return unet, controlnet


class YOSO(nn.Module):
    """ControlNet(image latent) -> U-Net residuals -> clean normal latent, in one pass at t = T - 1."""

    def __init__(self, unet, controlnet, num_train_timesteps: int = 1000):
        super().__init__()
        self.unet, self.controlnet = unet, controlnet
        self.T = num_train_timesteps
        dim = unet.config.cross_attention_dim
        self.prompt = nn.Parameter(torch.zeros(1, 1, dim, device=unet.device))  # learned "empty prompt" token

    def forward(self, cond: torch.Tensor, sample: torch.Tensor | None = None, t: torch.Tensor | None = None):
        sample = torch.zeros_like(cond) if sample is None else sample
        if t is None:
            t = torch.full((cond.shape[0],), self.T - 1, device=cond.device, dtype=torch.long)
        text = self.prompt.expand(cond.shape[0], -1, -1)
        down, mid = self.controlnet(sample, t, encoder_hidden_states=text, controlnet_cond=cond, return_dict=False)
        return self.unet(sample, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid).sample


class _Joint(nn.Module):
    """``f(cat(sample, cond), t).sample``: lets ``afcore.ldm``'s paired passes shift sample and condition together."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, t):
        c = x.shape[1] // 2
        return _Out(self.model(x[:, c:], x[:, :c], t))


class _Out:
    def __init__(self, sample):
        self.sample = sample


def yoso_loss(model, cond, target, generator: torch.Generator, p_zero: float = 0.4, train_t: str = "fixed",
              eq_weight: float = 0.0, stop_grad: str = "none", max_frac: float = 0.375, cfa_detach: bool = True,
              decoded_weight: float = 0.0, decode=None, target_image: torch.Tensor | None = None):
    """(loss, logs): x0 MSE of model(cond, sample, t) against the clean normal latent ``target``; with
    ``eq_weight`` > 0 the same unshifted pass is the reference of the equivariance loss (CFA over both networks,
    sample and condition shifted by the same 1/8-step latent shift, valid mask, ``stop_grad`` and ``cfa_detach``
    -- default True, the stored keys/values carry no gradient, as in the reference -- as in ``afcore.ldm``).

    ``decoded_weight`` > 0 adds that weight times the MSE between ``decode(prediction)`` (a differentiable decoder
    to the normal-code image; the VAE itself is frozen) and ``target_image``, the true normal map in that code: a
    loss on what the metric sees, not only on the latent (the latent MSE weighs all latent directions alike, and a
    decoder can turn the same latent error into very different normal errors)."""
    _check("train_t (normals_train_t)", train_t, TRAIN_T)
    if not 0 <= p_zero <= 1:
        raise ValueError(f"p_zero (normals_p_zero) must be in [0, 1], got {p_zero}")
    b, dev = cond.shape[0], cond.device
    noise = torch.randn(cond.shape, generator=generator, device=dev, dtype=cond.dtype)
    zero = torch.rand((b, 1, 1, 1), generator=generator, device=dev) < p_zero
    sample = torch.where(zero, torch.zeros_like(noise), noise)
    T = model.T
    t = (torch.full((b,), T - 1, device=dev, dtype=torch.long) if train_t == "fixed"
         else torch.randint(0, T, (b,), generator=generator, device=dev))
    if decoded_weight < 0 or (decoded_weight > 0 and (decode is None or target_image is None)):
        raise ValueError(f"decoded_weight (normals_decoded_weight) must be >= 0, and > 0 needs decode and "
                         f"target_image, got {decoded_weight}")
    logs, eq = {}, None
    if eq_weight <= 0:
        ref = model(cond, sample, t)
    else:
        d = ldm.sample_latent_shift(cond.shape[-2:], generator, max_frac=max_frac)
        joint = _Joint(model)
        ref, out = ldm._paired_passes(joint, torch.cat([sample, cond], 1), t, d, True, stop_grad, cfa_detach)
        eq, _ = ldm._masked_shift_error(out, ref, d, stop_grad)
    x0 = ((ref - target) ** 2).mean()
    loss, logs["x0"] = x0, x0.item()
    if eq is not None:
        loss, logs["eq"] = loss + eq_weight * eq, eq.item()
    if decoded_weight > 0:
        dec = ((decode(ref) - target_image) ** 2).mean()
        loss, logs["dec"] = loss + decoded_weight * dec, dec.item()
    return loss, logs


def save_yoso(model: YOSO, path) -> Path:
    """unet/ and controlnet/ (``save_alias_free``, patch recorded) and prompt.pt under ``path``."""
    path = Path(path)
    save_alias_free(model.unet, path / "unet")
    save_alias_free(model.controlnet, path / "controlnet")
    save_torch({"prompt": model.prompt.detach().cpu(), "T": model.T}, path / "prompt.pt")
    return path


def load_yoso(path) -> YOSO:
    """Inverse of ``save_yoso``: the ControlNet is rebuilt from its config with the conv conditioning, its weights
    loaded strictly, and each network's alias-free patch re-applied."""
    import json

    from diffusers import ControlNetModel, UNet2DConditionModel
    from safetensors.torch import load_file

    from afcore.surgery import load_alias_free

    path = Path(path)
    unet = load_alias_free(UNet2DConditionModel, path / "unet")
    cn = ControlNetModel.from_config(ControlNetModel.load_config(path / "controlnet"))
    cn.controlnet_cond_embedding = _zero_conv(cn.config.conditioning_channels, cn.config.block_out_channels[0])
    cn.load_state_dict(load_file(path / "controlnet" / "diffusion_pytorch_model.safetensors"), strict=True)
    patch = json.loads((path / "controlnet" / PATCH_FILE).read_text())
    if patch["resample"] or patch["nonlinearity"]:
        make_alias_free(cn, **patch)
    extra = torch.load(path / "prompt.pt", map_location="cpu")
    model = YOSO(unet, cn.eval(), extra["T"])
    model.prompt.data.copy_(extra["prompt"])
    return model.eval()


class PointwiseControl(nn.Module):
    """Positive control: a linear 1x1 conv from the image latent to a 'normal latent' (exactly equivariant to any
    Fourier shift, zero-filled border included), used with a pointwise linear 'decoder' at latent resolution."""

    def __init__(self, latent_ch: int = 4, out_ch: int = 4, seed: int = 0, device="cpu"):
        super().__init__()
        g = torch.Generator(device=device).manual_seed(seed)
        self.conv = nn.Conv2d(latent_ch, out_ch, 1).to(device)
        self.decoder = nn.Conv2d(out_ch, 3, 1, bias=False).to(device)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, device=device))
            self.decoder.weight[2] += 3.0  # the decoded 'normals' lean toward the viewer (no near-zero vectors)

    def forward(self, cond, sample=None, t=None):
        return self.conv(cond)
