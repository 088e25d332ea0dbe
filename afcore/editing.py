"""AF-LDM's warping-equivariant video editing (taught in notebooks/41_video_editing.py).

Editing (SDEdit-like, AF-LDM appendix B): every frame's latent is DDIM-*inverted* with the null condition up to an
intermediate step (``strength`` of the chain), then denoised from there with the edit condition and classifier-free
guidance. Cross-frame attention (CFA) is on in both stages and anchored on frame 0: frame 0 runs first and stores every
self-attention layer's input per call (``EquivariantAttention.record``), every frame then takes keys/values from it
(``use``). No optical flow is used: the motion rides in the inverted latents, and an equivariant model carries it
to the output.

- ``ddim_invert`` climbs the chain: at each timestep t (ascending) the noise is predicted from the current latent,
  the clean latent is estimated with the current level's alpha, and the latent is re-noised to level t with the
  same noise. ``ddim_generate`` walks back down with ``diffusers.DDIMScheduler`` (eta 0), optionally with CFG
  (batch [uncond..., cond...]).
- ``class_conditional`` turns a trained unconditional ``UNet2DModel`` into a class-conditional one whose class
  embedding starts at zero (so it starts as the unconditional model), keeping its alias-free patch.
- ``interpolate``: AF-LDM's latent interpolation between two frames (inversion, forward splatting of the inverted
  latents by alpha times the flow, slerp, attention outputs blended from the two references, ``BlendedAttention``),
  as the paper describes it (``variant="paper"``) or as the released script runs it (``"released"``: every
  intermediate frame is frame a's latent splatted forward by alpha F_ab, attention from frame a only).
- ``circular`` makes every convolution (and the alias-free down-sampler's) pad circularly: with ideal (FFT)
  resampling everything is then exactly equivariant to circular shifts by multiples of the total stride, the
  positive control of the editing pipeline.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from afcore.attention import EquivariantAttention
from afcore.ldm import make_scheduler

__all__ = ["sepia", "class_conditional", "Conditioned", "edit_timesteps", "ddim_invert", "ddim_generate",
           "edit_latents", "circular", "BlendedAttention", "slerp", "splat_latent", "INTERP_VARIANTS",
           "interpolation_latents", "attention_weights", "interpolate"]

SEPIA = torch.tensor([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]])


def sepia(x: torch.Tensor) -> torch.Tensor:
    """The sepia colour matrix on [0, 1] colours, clipped; images in and out in [-1, 1]. Pointwise, so it commutes
    with any warp: the edited video's ground truth is sepia(frame)."""
    rgb = (x + 1) / 2
    out = torch.einsum("ij,...jhw->...ihw", SEPIA.to(x), rgb).clamp(0, 1)
    return out * 2 - 1


def class_conditional(unet, num_classes: int = 3):
    """A copy of ``unet`` (``UNet2DModel``) with ``num_class_embeds`` classes; the class embedding starts at zero."""
    from diffusers import UNet2DModel

    from afcore.surgery import make_alias_free

    out = UNet2DModel.from_config(unet.config, num_class_embeds=num_classes)
    patch = getattr(unet, "_alias_free_patch", None)
    if patch and (patch["resample"] or patch["nonlinearity"]):
        make_alias_free(out, **patch)
    missing, unexpected = out.load_state_dict(unet.state_dict(), strict=False)
    if unexpected or any(not k.startswith("class_embedding") for k in missing):
        raise ValueError(f"class_conditional: unexpected keys {unexpected}, missing {missing}")
    nn.init.zeros_(out.class_embedding.weight)
    return out


class Conditioned(nn.Module):
    """``unet(x, t)`` with fixed ``class_labels`` (set ``.labels``), so class-free helpers (``afcore.ldm``) work."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet
        self.labels = None

    def forward(self, x, t):
        labels = self.labels
        if labels is not None and labels.shape[0] != x.shape[0]:
            labels = labels.repeat_interleave(x.shape[0] // labels.shape[0])
        return self.unet(x, t, class_labels=labels)


def edit_timesteps(steps: int, strength: float) -> torch.Tensor:
    """The last ``int(steps * strength)`` timesteps of a ``steps``-step DDIM chain (descending)."""
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    sched = make_scheduler("ddim")
    sched.set_timesteps(steps)
    k = int(steps * strength)
    if k < 1:
        raise ValueError(f"steps * strength must be >= 1, got {steps} * {strength}")
    return sched.timesteps[-k:]


def _kwargs(c, n):
    """Conditioning as U-Net keywords: a tensor is class labels; a dict is passed as is (batch-1 entries broadcast,
    e.g. ``{"encoder_hidden_states": text_embedding}``)."""
    if isinstance(c, dict):
        return {k: v.expand(n, *v.shape[1:]) if v.shape[0] == 1 else v for k, v in c.items()}
    return {"class_labels": c}


def _eps(unet, x, t, labels, cfg, null):
    tt = torch.full((x.shape[0],), int(t), device=x.device)
    if labels is None:
        return unet(x, tt).sample
    n = x.shape[0]
    kw = _kwargs(labels, n)
    if cfg == 1.0:
        return unet(x, tt, **kw).sample
    nkw = _kwargs(null if isinstance(null, dict) else torch.full_like(labels, null), n)
    both = unet(torch.cat([x, x]), torch.cat([tt, tt]), **{k: torch.cat([nkw[k], kw[k]]) for k in kw}).sample
    u, c = both.chunk(2)
    return u + cfg * (c - u)


@torch.no_grad()
def ddim_invert(unet, z0: torch.Tensor, timesteps, labels=None, trajectory: bool = False):
    """DDIM inversion of clean latents ``z0`` up to the largest of ``timesteps`` (any order); returns z_T
    (and the list of latents after every step with ``trajectory``)."""
    sched = make_scheduler("ddim")
    acp = sched.alphas_cumprod.to(z0.device)
    a_prev = sched.final_alpha_cumprod.to(z0.device)  # the level DDIM sampling ends at
    z, traj = z0, []
    for t in sorted(int(t) for t in timesteps):
        eps = _eps(unet, z, t, labels, 1.0, 0)
        x0 = (z - (1 - a_prev).sqrt() * eps) / a_prev.sqrt()
        a_prev = acp[t]
        z = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        traj.append(z)
    return (z, traj) if trajectory else z


@torch.no_grad()
def ddim_generate(unet, z: torch.Tensor, timesteps, labels=None, cfg: float = 1.0, null: int = 0, steps=None):
    """DDIM (eta 0) down ``timesteps`` (descending) from z; CFG with ``cfg`` != 1 (null class ``null``)."""
    sched = make_scheduler("ddim")
    sched.set_timesteps(steps or len(timesteps))
    for t in timesteps:
        z = sched.step(_eps(unet, z, t, labels, cfg, null), t, z, eta=0.0).prev_sample
    return z


@torch.no_grad()
def edit_latents(unet, z: torch.Tensor, steps: int, strength: float, edit_label: int | dict = 2,
                 null: int | dict = 0, cfg: float = 3.0, cfa_inversion: bool = True, cfa_generation: bool = True):
    """Edit videos of latents z (V, F, C, h, w): inversion with the null condition, generation with the edit
    condition and CFG; CFA anchored on each video's frame 0 in the stages where it is on. Returns (V, F, C, h, w).

    Conditions are class indices (``edit_label``, ``null``) or, for text-conditional U-Nets, keyword dicts such as
    ``{"encoder_hidden_states": embedding}`` with batch 1 (broadcast to every frame)."""
    v, nf = z.shape[:2]
    ts = edit_timesteps(steps, strength)
    flat = z.flatten(0, 1)  # [v0 f0..f(F-1), v1 f0.., ...]: V contiguous groups, one per reference
    if isinstance(edit_label, dict) != isinstance(null, dict):
        raise ValueError("edit_label and null must both be class indices or both keyword dicts")
    if isinstance(null, dict):
        null_l, edit_l = _Broadcast(null), _Broadcast(edit_label)
    else:
        null_l = torch.full((v * nf,), null, device=z.device, dtype=torch.long)
        edit_l = torch.full((v * nf,), edit_label, device=z.device, dtype=torch.long)
    with EquivariantAttention(unet) as eq:
        if cfa_inversion:
            eq.record()
            ddim_invert(unet, z[:, 0], ts, null_l[:v])
            eq.use()
        else:
            eq.off()
        inv = ddim_invert(unet, flat, ts, null_l)
        if cfa_generation:  # reference: frame 0 of each video, CFG batch [uncond refs, cond refs]
            eq.record()
            ddim_generate(unet, inv.reshape(v, nf, *z.shape[2:])[:, 0], ts, edit_l[:v], cfg, null, steps)
            eq.use()
        else:
            eq.off()
        out = ddim_generate(unet, inv, ts, edit_l, cfg, null, steps)
    return out.reshape(z.shape)


class _Broadcast(dict):
    """A keyword dict that ignores slicing (its entries have batch 1 and broadcast)."""

    def __getitem__(self, key):
        return self if isinstance(key, slice) else super().__getitem__(key)


def circular(model: nn.Module) -> nn.Module:
    """Every padded Conv2d pads circularly, including the alias-free down-sampler's stride-1 conv (in place)."""
    from afcore.layers import ideal_down2
    from afcore.surgery import _downsample_cls

    _, af_down = _downsample_cls()

    class CircularAFDown(af_down):
        def forward(self, hidden_states, *args, **kwargs):
            if self.norm is not None:
                hidden_states = self.norm(hidden_states.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            if self.use_conv:
                p = self.conv.kernel_size[0] // 2
                hidden_states = F.conv2d(F.pad(hidden_states, (p, p, p, p), mode="circular"), self.conv.weight,
                                         self.conv.bias)
            return ideal_down2(hidden_states, self.af_impl, getattr(self, "af_nyquist", "zero"))

    for m in model.modules():
        if type(m) is af_down:
            m.__class__ = CircularAFDown
        elif isinstance(m, nn.Conv2d) and any(p > 0 for p in m.padding if isinstance(p, int)):
            m.padding_mode = "circular"
            m._reversed_padding_repeated_twice = [p for p in reversed(m.padding) for _ in range(2)]
    return model


# ------------------------------------------------------------------------------------------------ interpolation
class BlendedAttention:
    """Cross-frame attention from two references, blended: output = sum_s w_s Attn(q, K_s, V_s) (AF-LDM's latent
    interpolation blends attention *outputs*, not keys/values). ``record(slot)`` stores a reference pass in slot 0
    or 1 (calls indexed by order, as ``EquivariantAttention``); ``use(weights)`` with weights (B, 2) or a pair."""

    def __init__(self, unet):
        self.unet = unet
        self.caches = [{}, {}]
        self.state = {"mode": "off", "counter": {}, "slot": 0, "weights": None}
        self._saved = None

    def _layers(self):
        from diffusers.models.attention_processor import Attention
        return {n: m for n, m in self.unet.named_modules() if isinstance(m, Attention)}

    def __enter__(self):
        layers = self._layers()
        self._saved = {n: m.processor for n, m in layers.items()}
        for n, m in layers.items():
            m.set_processor(_BlendProcessor(n, self))
        return self

    def __exit__(self, *exc):
        for n, m in self._layers().items():
            m.set_processor(self._saved[n])
        self.caches = [{}, {}]
        return False

    def record(self, slot: int):
        if slot not in (0, 1):
            raise ValueError(f"slot must be 0 or 1, got {slot}")
        self.caches[slot] = {}
        self.state.update(mode="record", counter={}, slot=slot)

    def use(self, weights):
        w = torch.as_tensor(weights, dtype=torch.float32)
        if w.ndim == 1:
            w = w[None]
        if w.shape[-1] != 2:
            raise ValueError(f"weights must be (B, 2) or a pair, got shape {tuple(w.shape)}")
        self.state.update(mode="use", counter={}, weights=w)


class _BlendProcessor:
    def __init__(self, name, owner):
        from diffusers.models.attention_processor import AttnProcessor2_0  # SDPA: the fused kernel on a GPU
        self.name, self.owner, self.plain = name, owner, AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *a, **k):
        from afcore.attention import _cross_frame

        st = self.owner.state
        if encoder_hidden_states is not None or st["mode"] == "off":
            return self.plain(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        idx = st["counter"].get(self.name, 0)
        st["counter"][self.name] = idx + 1
        if st["mode"] == "record":
            self.owner.caches[st["slot"]][(self.name, idx)] = hidden_states.detach()
            return self.plain(attn, hidden_states, None, attention_mask, temb)
        w = st["weights"].to(hidden_states)
        w = w.expand(hidden_states.shape[0], 2) if w.shape[0] == 1 else w
        out = 0
        for s in (0, 1):
            ref = self.owner.caches[s].get((self.name, idx))
            if ref is None:
                raise ValueError(f"no reference in slot {s} for layer {self.name!r} call {idx}")
            o = _cross_frame(attn, hidden_states, ref, temb)
            out = out + w[:, s].reshape(-1, *([1] * (o.ndim - 1))) * o
        return out


def slerp(a: torch.Tensor, b: torch.Tensor, alpha) -> torch.Tensor:
    """Spherical interpolation per sample between a and b (B, ...); alpha a float or (B,)."""
    alpha = torch.as_tensor(alpha, dtype=a.dtype, device=a.device).reshape(-1, *([1] * (a.ndim - 1)))
    af, bf = a.flatten(1), b.flatten(1)
    cos = (af * bf).sum(1) / (af.norm(dim=1) * bf.norm(dim=1)).clamp_min(1e-12)
    th = torch.arccos(cos.clamp(-1 + 1e-7, 1 - 1e-7)).reshape(-1, *([1] * (a.ndim - 1)))
    return (torch.sin((1 - alpha) * th) * a + torch.sin(alpha * th) * b) / torch.sin(th)


def splat_latent(z: torch.Tensor, flow_img: torch.Tensor, factor: int, fill: torch.Tensor) -> torch.Tensor:
    """Forward-splat a latent by an image-resolution flow: ideal x``factor`` up-sampling, normalised bilinear splat,
    holes filled with ``fill`` (a noise field at image resolution), every ``factor``-th sample kept."""
    from afcore.flow import forward_splat
    from afcore.signal import upsample

    up = upsample(z, factor, method="ideal")
    y, w = forward_splat(up, flow_img, normalize=True)
    y = torch.where(w > 1e-6, y, fill)
    return y[..., ::factor, ::factor]


INTERP_VARIANTS = ("paper", "released")


def interpolation_latents(inv_a: torch.Tensor, inv_b: torch.Tensor, flow_ab: torch.Tensor, flow_ba: torch.Tensor,
                          alphas, factor: int, fill: torch.Tensor, variant: str = "paper") -> torch.Tensor:
    """The starting latents of the interpolated frames, (P, A, C, h, w), from inverted latents inv_a, inv_b
    (P, C, h, w) and image-resolution flows (P, 2, H, W).

    ``paper``: inv_a splatted by alpha F_ab and inv_b by (1 - alpha) F_ba, slerped with weight alpha.
    ``released``: what AF-LDM's released interpolation script runs (its keyword that would switch the slerp on is
    misspelt, so the pipeline's default applies): every intermediate frame is inv_a splatted forward by alpha F_ab
    alone; inv_b is used only as the last frame (alpha = 1), which that pipeline keeps as b's inverted latent."""
    if variant not in INTERP_VARIANTS:
        raise ValueError(f"variant must be one of {INTERP_VARIANTS}, got {variant!r}")
    p, lat = inv_a.shape[0], []
    for a in (float(a) for a in alphas):
        wa = splat_latent(inv_a, a * flow_ab, factor, fill)
        if variant == "released":
            lat.append(inv_b if a >= 1.0 else wa)
            continue
        wb = splat_latent(inv_b, (1 - a) * flow_ba, factor, fill)
        lat.append(slerp(wa, wb, torch.full((p,), a, device=inv_a.device)))
    return torch.stack(lat, 1)


def attention_weights(alphas, variant: str = "paper") -> torch.Tensor:
    """(A, 2) weights of the two attention references (a, b) per alpha: (1 - alpha, alpha) for ``paper``; (1, 0)
    for ``released`` (the released pipeline's cross-frame attention reads image a's stored pass only)."""
    if variant not in INTERP_VARIANTS:
        raise ValueError(f"variant must be one of {INTERP_VARIANTS}, got {variant!r}")
    return torch.tensor([[1 - float(a), float(a)] if variant == "paper" else [1.0, 0.0] for a in alphas])


@torch.no_grad()
def interpolate(unet, za: torch.Tensor, zb: torch.Tensor, flow_ab: torch.Tensor, flow_ba: torch.Tensor,
                alphas, steps: int, factor: int, generator=None, labels=None, variant: str = "paper"):
    """AF-LDM latent interpolation between clean latents za, zb (P, C, h, w) with image-resolution flows
    (P, 2, H, W): full DDIM inversion of both, the starting latents of ``interpolation_latents``, denoised with
    the self-attention outputs blended by ``attention_weights`` from the two references' denoising passes
    (``variant``: ``paper`` or ``released``, see there). ``generator`` draws the holes' noise fill on its own
    device. Returns (P, A, C, h, w)."""
    ts = edit_timesteps(steps, 1.0)
    p, alphas = za.shape[0], [float(a) for a in alphas]
    w = attention_weights(alphas, variant)  # validates variant before any work
    lab = labels if labels is not None else torch.zeros(p, dtype=torch.long, device=za.device)
    inv_a, inv_b = ddim_invert(unet, za, ts, lab), ddim_invert(unet, zb, ts, lab)
    fill = torch.randn((p, za.shape[1]) + tuple(flow_ab.shape[-2:]), generator=generator,
                       device=generator.device if generator is not None else "cpu").to(za)
    z = interpolation_latents(inv_a, inv_b, flow_ab, flow_ba, alphas, factor, fill, variant).flatten(0, 1)
    labs = lab.repeat_interleave(len(alphas))  # z is [pair0 alphas..., pair1 alphas...]
    with BlendedAttention(unet) as att:
        att.record(0)
        ddim_generate(unet, inv_a, ts, lab, steps=steps)
        att.record(1)
        ddim_generate(unet, inv_b, ts, lab, steps=steps)
        att.use(w.repeat(p, 1))
        out = ddim_generate(unet, z, ts, labs, steps=steps)
    return out.reshape(p, len(alphas), *za.shape[1:])
