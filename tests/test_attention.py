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
