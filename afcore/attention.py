"""Equivariant (cross-frame) attention for diffusers U-Nets (taught in notebooks/30_af_ldm.py).

AF-LDM (Sec. 3.4) makes self-attention shift-equivariant by anchoring keys and values on a
*reference* pass: the reference pass stores every self-attention layer's input (per layer and per
call, i.e. per timestep of a sampling loop); a later pass on a shifted/warped input takes its
queries from the current input but its keys/values from the stored reference.  Because softmax
attention with fixed keys/values acts query-by-query, a spatial permutation of the queries
permutes the output exactly (GroupNorm statistics are permutation invariant).

Usage::

    with EquivariantAttention(unet) as eq:
        eq.record()            # reference pass: stores inputs, plain attention
        ref = unet(x, t).sample
        eq.use()               # later passes: queries from input, K/V from the reference
        out = unet(shift(x), t).sample

Works for UNet2DModel and UNet2DConditionModel: cross-attention (encoder_hidden_states given,
e.g. text) is computed by the plain processor, untouched.  Batches: a batch of B is read as R
contiguous groups of B/R, R being the reference batch, and group g takes its keys/values from
reference g.  So with classifier-free guidance the reference pass is [uncond, cond] and a batch of
F frames is [uncond x F, cond x F] (the layout ``torch.cat([latents] * 2)`` gives): every frame uses
the reference of its own half, never the other half's (the pitfall of processors that assume
"frame 0 of the batch" is the reference).  R = B matches index by index; R = 1 is broadcast.
The original processors are restored on exit.

Kernels: ``impl="sdpa"`` (default) runs every pass through ``torch.nn.functional.scaled_dot_product_attention``
(flash / memory-efficient kernels on a GPU): the plain passes (record, off, text cross-attention) through diffusers'
``AttnProcessor2_0``, the anchored pass through the same call with keys/values from the reference. ``impl="ref"``
writes self-attention out, softmax(q k^T * scale) v in the inputs' precision (text cross-attention and masked calls
go to diffusers' legacy ``AttnProcessor``, whose softmax runs in float32): the reference the tests compare the fast
path with (they agree to float round-off). ``use_sdpa(model)`` puts ``AttnProcessor2_0`` on every attention layer of
a model that still holds the legacy processor.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

__all__ = ["EquivariantAttention", "CrossFrameAttnProcessor", "use_sdpa", "IMPLS"]

IMPLS = ("sdpa", "ref")


def _check_impl(impl):
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {list(IMPLS)}, got {impl!r}")


def use_sdpa(model) -> int:
    """Give every attention layer of ``model`` that holds diffusers' legacy ``AttnProcessor`` the SDPA processor
    ``AttnProcessor2_0`` (same maths, fused kernels); returns how many layers changed."""
    changed = 0
    for m in model.modules():
        if isinstance(m, Attention) and type(m.processor) is AttnProcessor:
            m.set_processor(AttnProcessor2_0())
            changed += 1
    return changed


class CrossFrameAttnProcessor:
    """Attention processor sharing a state dict with :class:`EquivariantAttention`; ``impl``: "sdpa" (fused
    kernels) or "ref" (written out), see the module doc."""

    def __init__(self, name: str, state: dict, impl: str = "sdpa"):
        _check_impl(impl)
        self.name = name
        self.state = state
        self.impl = impl
        self.plain = AttnProcessor2_0() if impl == "sdpa" else AttnProcessor()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, *args, **kwargs):
        mode = self.state["mode"]
        if encoder_hidden_states is not None or mode == "off":
            return self._plain(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        counter = self.state["counter"]
        idx = counter.get(self.name, 0)
        counter[self.name] = idx + 1
        key = (self.name, idx)
        if mode == "record":
            self.state["cache"][key] = hidden_states.detach() if self.state["detach"] else hidden_states
            return self._plain(attn, hidden_states, None, attention_mask, temb)
        if key not in self.state["cache"]:
            raise ValueError(f"no reference stored for layer {self.name!r} call {idx}; run a record() pass first")
        ref = self.state["cache"][key]
        return _cross_frame(attn, hidden_states, ref, temb, self.impl)

    def _plain(self, attn, hidden_states, encoder_hidden_states, attention_mask, temb):
        """Ordinary attention: AttnProcessor2_0 ("sdpa"); self-attention written out ("ref")."""
        if self.impl == "ref" and encoder_hidden_states is None and attention_mask is None:
            return _cross_frame(attn, hidden_states, hidden_states, temb, "ref")
        return self.plain(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def _flatten(attn, h, temb):
    if attn.spatial_norm is not None:
        h = attn.spatial_norm(h, temb)
    shape = h.shape
    if h.ndim == 4:
        b, c, hh, ww = shape
        h = h.view(b, c, hh * ww).transpose(1, 2)
    if attn.group_norm is not None:
        h = attn.group_norm(h.transpose(1, 2)).transpose(1, 2)
    return h, shape


def _cross_frame(attn, hidden_states, ref, temb, impl="sdpa"):
    residual = hidden_states
    h, shape = _flatten(attn, hidden_states, temb)
    r, _ = _flatten(attn, ref, temb)
    b, n_ref = h.shape[0], r.shape[0]
    if b % n_ref:
        raise ValueError(f"batch size {b} is not a multiple of the reference batch {n_ref}: the batch must be "
                         f"{n_ref} contiguous groups (e.g. [uncond frames..., cond frames...]), one per reference")
    r = r.repeat_interleave(b // n_ref, dim=0)
    q = attn.to_q(h)
    k = attn.to_k(r)
    v = attn.to_v(r)
    heads = attn.heads
    d = q.shape[-1] // heads
    q, k, v = (x.view(b, -1, heads, d).transpose(1, 2) for x in (q, k, v))
    if attn.norm_q is not None:  # q/k normalisation of some models, as AttnProcessor2_0 applies it
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)
    if impl == "sdpa":
        o = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
    else:  # written out: the reference the fused kernel is tested against
        o = torch.softmax((q @ k.transpose(-1, -2)) * attn.scale, dim=-1) @ v
    o = o.transpose(1, 2).reshape(b, -1, heads * d).to(q.dtype)
    o = attn.to_out[0](o)
    o = attn.to_out[1](o)
    if len(shape) == 4:
        o = o.transpose(-1, -2).reshape(shape)
    if attn.residual_connection:
        o = o + residual
    return o / attn.rescale_output_factor


class EquivariantAttention:
    """Context manager installing :class:`CrossFrameAttnProcessor` on every attention layer.

    ``detach=True`` stores the reference without gradient (stop-gradient option of the
    equivariance loss in :mod:`afcore.ldm`). ``impl``: "sdpa" (default, fused kernels) or "ref" (written out).
    """

    def __init__(self, unet, detach: bool = False, impl: str = "sdpa"):
        _check_impl(impl)
        self.unet = unet
        self.impl = impl
        self.state = {"mode": "off", "counter": {}, "cache": {}, "detach": detach}
        self._saved = None

    def _layers(self):
        # UNet2DModel has no attn_processors property: walk the Attention modules directly
        return {n: m for n, m in self.unet.named_modules() if isinstance(m, Attention)}

    def __enter__(self):
        layers = self._layers()
        self._saved = {n: m.processor for n, m in layers.items()}
        for n, m in layers.items():
            m.set_processor(CrossFrameAttnProcessor(n, self.state, self.impl))
        return self

    def __exit__(self, *exc):
        for n, m in self._layers().items():
            m.set_processor(self._saved[n])
        self.state["cache"].clear()
        return False

    def record(self):
        """Next passes store references (the cache is cleared)."""
        self.state.update(mode="record", counter={})
        self.state["cache"].clear()

    def use(self):
        """Next passes use stored references; call indices restart at 0 (one sampling loop)."""
        self.state.update(mode="use", counter={})

    def off(self):
        self.state.update(mode="off", counter={})
