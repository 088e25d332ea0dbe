import torch
import pytest
from diffusers import UNet2DModel, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor

from afcore.attention import EquivariantAttention, CrossFrameAttnProcessor


def _unet():
    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32,),
                       down_block_types=("AttnDownBlock2D",), up_block_types=("AttnUpBlock2D",),
                       layers_per_block=1, norm_num_groups=8, attention_head_dim=8).eval()


def _conditional_unet():
    torch.manual_seed(0)
    return UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 32),
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                                cross_attention_dim=16, attention_head_dim=8, norm_num_groups=8).eval()


def _attn(unet):
    return [m for n, m in unet.named_modules() if type(m).__name__ == "Attention"][0]


def _by_hand(attn, h, ref):
    """Attention with queries from h and keys/values from ref, written out (explicit softmax), for one layer of a
    UNet2DModel (GroupNorm over the channels, residual connection)."""
    b, c, hh, ww = h.shape
    flat = lambda t: attn.group_norm(t.reshape(t.shape[0], c, hh * ww)).transpose(1, 2)  # (b, n, c)
    q, k, v = attn.to_q(flat(h)), attn.to_k(flat(ref)), attn.to_v(flat(ref))
    heads = attn.heads
    split = lambda t: t.reshape(t.shape[0], hh * ww, heads, c // heads).transpose(1, 2)
    q, k, v = split(q), split(k), split(v)
    w = torch.softmax(q @ k.transpose(-1, -2) / (c // heads) ** 0.5, dim=-1)
    o = (w @ v).transpose(1, 2).reshape(b, hh * ww, c)
    o = attn.to_out[1](attn.to_out[0](o)).transpose(1, 2).reshape(b, c, hh, ww)
    return (o + h) / attn.rescale_output_factor


def test_permutation_equivariance_exact():
    torch.manual_seed(1)
    attn = _attn(_unet())
    x = torch.randn(2, 32, 6, 6)
    perm = torch.randperm(36)
    xp = x.flatten(2)[:, :, perm].view_as(x)
    state = {"mode": "record", "counter": {}, "cache": {}, "detach": True}
    p = CrossFrameAttnProcessor("a", state)
    y = p(attn, x)
    state.update(mode="use", counter={})
    yp = p(attn, xp)
    assert torch.allclose(yp, y.flatten(2)[:, :, perm].view_as(y), atol=1e-5)
    # circular shift is a permutation: same property
    state.update(mode="use", counter={})
    ys = p(attn, torch.roll(x, (2, 3), (2, 3)))
    assert torch.allclose(ys, torch.roll(y, (2, 3), (2, 3)), atol=1e-5)
    # on a new input: queries from it, keys/values from the reference, as written out by hand
    state.update(mode="use", counter={})
    other = torch.randn_like(x)
    with torch.no_grad():
        assert torch.allclose(p(attn, other), _by_hand(attn, other, x), atol=1e-5)
        # and the record pass is plain self-attention
        assert torch.allclose(y, _by_hand(attn, x, x), atol=1e-5)


def test_reference_pass_equals_plain_and_restore():
    unet = _unet()
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 10])
    before = [m.processor for m in unet.modules() if type(m).__name__ == 'Attention']
    with torch.no_grad():
        base = unet(x, t).sample
        with EquivariantAttention(unet) as eq:
            assert all(isinstance(p, CrossFrameAttnProcessor) for p in [m.processor for m in unet.modules() if type(m).__name__ == 'Attention'])
            eq.record()
            rec = unet(x, t).sample
            eq.use()
            use = unet(x, t).sample
    assert torch.allclose(rec, base, atol=1e-5) and torch.allclose(use, base, atol=1e-5)
    after = [m.processor for m in unet.modules() if type(m).__name__ == 'Attention']
    assert all(a is b for a, b in zip(before, after)) and len(after) == len(before) > 0


def test_cfg_batch_layout():
    """Under CFG the batch is [uncond..., cond...]; each half uses its own reference half."""
    unet = _conditional_unet()
    x = torch.randn(1, 4, 8, 8)
    enc = torch.randn(2, 5, 16)  # [uncond, cond]
    xx, t = torch.cat([x, x]), torch.tensor([5, 5])
    self_attention = {n for n, m in unet.named_modules() if type(m).__name__ == "Attention" and not m.is_cross_attention}
    assert self_attention and len(self_attention) < len([m for m in unet.modules() if type(m).__name__ == "Attention"])
    with torch.no_grad(), EquivariantAttention(unet) as eq:
        eq.record()
        ref = unet(xx, t, encoder_hidden_states=enc).sample
        # one stored input per self-attention layer and call (one call each here); text cross-attention not stored
        assert set(eq.state["cache"]) == {(n, 0) for n in self_attention}
        eq.use()
        both = unet(xx, t, encoder_hidden_states=enc).sample
        eq.use()
        swapped = unet(xx, t, encoder_hidden_states=enc.flip(0)).sample
        # sample 0 of the swapped pass = a pass anchored on reference 0 alone (R = 1), with the cond text
        eq.record()
        unet(x, t[:1], encoder_hidden_states=enc[:1])
        eq.use()
        alone = unet(x, t[:1], encoder_hidden_states=enc[1:]).sample
    assert torch.allclose(both, ref, atol=1e-5)
    assert torch.allclose(swapped[:1], alone, atol=1e-5)
    assert (swapped[:1] - ref[1:]).abs().max() > 1e-3  # self-attention anchored on the uncond half, not the cond one


def test_missing_reference_raises():
    unet = _unet()
    with EquivariantAttention(unet) as eq:
        eq.use()
        with pytest.raises(ValueError):
            unet(torch.randn(1, 4, 8, 8), torch.tensor([1]))


def test_cfg_batched_frames_use_their_own_halfs_reference():
    """Reference pass [uncond, cond]; frame pass [uncond x F, cond x F]: each frame uses its half's reference."""
    unet, frames = _conditional_unet(), 3
    x = torch.randn(1, 4, 8, 8)
    uncond, cond = torch.zeros(1, 5, 16), torch.randn(1, 5, 16)
    t = torch.tensor([7])
    with torch.no_grad(), EquivariantAttention(unet) as eq:
        eq.record()
        ref = unet(torch.cat([x, x]), t.repeat(2), encoder_hidden_states=torch.cat([uncond, cond])).sample
        eq.use()
        batch = torch.cat([x] * (2 * frames))  # torch.cat([latents] * 2) of F identical frames
        text = torch.cat([uncond] * frames + [cond] * frames)
        out = unet(batch, t.repeat(2 * frames), encoder_hidden_states=text).sample
        # same references, texts of the halves swapped: frame i must use the reference of its half (i // F),
        # which the index-by-index pass (R = B = 2) with swapped texts gives independently
        eq.use()
        mixed = unet(batch, t.repeat(2 * frames), encoder_hidden_states=text.roll(frames, 0)).sample
        eq.use()
        pairwise = unet(torch.cat([x, x]), t.repeat(2), encoder_hidden_states=torch.cat([cond, uncond])).sample
    assert torch.allclose(out, ref.repeat_interleave(frames, 0), atol=1e-5)
    assert torch.allclose(mixed, pairwise.repeat_interleave(frames, 0), atol=1e-5)
    # an interleaved reading (frame i -> reference i % 2) would give this instead, and it is far from it
    assert (mixed - pairwise.repeat(frames, 1, 1, 1)).abs().max() > 1e-2


def test_cross_frame_layer_is_exactly_equivariant_per_group():
    """At one attention layer: R references, B = R * F queries that are permutations of their group's reference."""
    torch.manual_seed(2)
    attn = _attn(_unet())
    ref = torch.randn(2, 32, 6, 6)
    state = {"mode": "record", "counter": {}, "cache": {}, "detach": True}
    p = CrossFrameAttnProcessor("a", state)
    y = p(attn, ref)
    perms = [torch.randperm(36) for _ in range(3)]
    permute = lambda t, perm: t.flatten(1)[:, perm].view_as(t)  # (C, H, W): re-index the pixels
    frames = torch.stack([permute(ref[g], perm) for g in range(2) for perm in perms])
    state.update(mode="use", counter={})
    out = p(attn, frames)
    expected = torch.stack([permute(y[g], perm) for g in range(2) for perm in perms])
    assert torch.allclose(out, expected, atol=1e-5)
    state.update(mode="use", counter={})
    with pytest.raises(ValueError, match="multiple of the reference batch"):
        p(attn, torch.randn(3, 32, 6, 6))


# --- kernels: SDPA (default) against the written-out reference ------------------------------------------------------


def _shifted_pair(unet, x, t, impl):
    """Output of the record pass on x and of the anchored pass on roll(x), and the gradient of their sum of squares
    (the shape of the equivariance-loss step: both passes differentiated)."""
    unet.zero_grad(set_to_none=True)
    with EquivariantAttention(unet, impl=impl) as eq:
        eq.record()
        ref = unet(x, t).sample
        eq.use()
        out = unet(torch.roll(x, (1, 2), (2, 3)), t).sample
    ((ref ** 2).sum() + (out ** 2).sum()).backward()
    return ref.detach(), out.detach(), [p.grad.clone() for p in unet.parameters() if p.grad is not None]


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_sdpa_equals_reference_impl(dtype, tol):
    """Both passes through F.scaled_dot_product_attention agree with the written-out attention (diffusers' legacy
    processor and an explicit softmax) to float round-off, forward and backward."""
    unet = _unet().to(dtype)
    x = torch.randn(3, 4, 8, 8, dtype=dtype, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([10, 500, 900])
    fast = _shifted_pair(unet, x, t, "sdpa")
    ref = _shifted_pair(unet, x, t, "ref")
    for a, b in zip(fast[:2] + tuple(fast[2]), ref[:2] + tuple(ref[2])):
        assert a.dtype == dtype
        assert torch.allclose(a, b, rtol=tol, atol=tol), (a - b).abs().max()
    # at one layer, for a batch of 4 frames anchored on 2 references (the cross-frame path proper)
    attn = _attn(unet)
    h = torch.randn(2, 32, 6, 6, dtype=dtype, generator=torch.Generator().manual_seed(4))
    frames = torch.randn(4, 32, 6, 6, dtype=dtype, generator=torch.Generator().manual_seed(5))
    outs = []
    for impl in ("sdpa", "ref"):
        state = {"mode": "record", "counter": {}, "cache": {}, "detach": True}
        p = CrossFrameAttnProcessor("a", state, impl=impl)
        with torch.no_grad():
            rec = p(attn, h)
            state.update(mode="use", counter={})
            outs.append((rec, p(attn, frames)))
    for a, b in zip(*outs):
        assert torch.allclose(a, b, rtol=tol, atol=tol), (a - b).abs().max()


def test_every_pass_goes_through_sdpa(monkeypatch):
    """With the default impl the plain (record / off) passes use diffusers' AttnProcessor2_0 and the anchored pass
    F.scaled_dot_product_attention: every attention call of the equivariance-loss step hits the fused kernel; the
    "ref" impl none."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    unet = _unet()
    n_layers = sum(type(m).__name__ == "Attention" for m in unet.modules())
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([3])
    with torch.no_grad():
        for impl, expected in (("sdpa", 3 * n_layers), ("ref", 0)):
            calls.clear()
            with EquivariantAttention(unet, impl=impl) as eq:
                kinds = {type(m.processor.plain) for m in unet.modules() if type(m).__name__ == "Attention"}
                assert kinds == {AttnProcessor2_0 if impl == "sdpa" else AttnProcessor}
                eq.off()
                unet(x, t)
                eq.record()
                unet(x, t)
                eq.use()
                unet(x, t)
            assert len(calls) == expected, impl
    with pytest.raises(ValueError, match="impl"):
        EquivariantAttention(unet, impl="flash")


def test_ordinary_attention_uses_sdpa_processor():
    """latent_unet's attention layers hold AttnProcessor2_0; use_sdpa replaces the legacy processor."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    from afcore import ldm
    from afcore.attention import use_sdpa

    unet = ldm.latent_unet((8, 16), groups=4)
    layers = [m for m in unet.modules() if type(m).__name__ == "Attention"]
    assert layers and all(type(m.processor) is AttnProcessor2_0 for m in layers)
    for m in layers:
        m.set_processor(AttnProcessor())
    assert use_sdpa(unet) == len(layers) and all(type(m.processor) is AttnProcessor2_0 for m in layers)
    assert use_sdpa(unet) == 0
