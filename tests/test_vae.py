"""AF-VAE loss pieces: shift sampling, stop-gradient targets, masks."""
from __future__ import annotations

import math

import pytest
import torch

from afcore import metrics, signal, vae as V
from afcore.surgery import make_alias_free, save_alias_free


@pytest.mark.parametrize("size, fraction", [(32, 0.375), (16, 0.375), (32, 0.25)])
def test_image_shifts_are_integers_covering_exactly_the_reference_range(size, fraction):
    """Both components take exactly the integers -L..L, L = floor(fraction * size) (12 for 32 px at 0.375), every
    one of them (a sampler stuck at 0, halved or off by one at either end fails)."""
    g = torch.Generator().manual_seed(0)
    shifts = [V.random_image_shift(size, g, max_fraction=fraction) for _ in range(1500)]
    limit = int(fraction * size)
    assert all(isinstance(a, int) and isinstance(b, int) for a, b in shifts)
    for axis in (0, 1):
        assert {s[axis] for s in shifts} == set(range(-limit, limit + 1))


def _encoder_and_decoder_params(model):
    enc = {n for n, _ in model.named_parameters() if n.startswith(("encoder.", "quant_conv."))}
    dec = {n for n, _ in model.named_parameters() if n.startswith(("decoder.", "post_quant_conv."))}
    assert enc and dec and enc | dec == {n for n, _ in model.named_parameters()}
    return enc, dec


def _grads(model):
    return {n: p.grad for n, p in model.named_parameters()}


def test_equivariance_terms_backpropagate_only_through_the_shifted_pass():
    """Reference trainer: the encoder term trains the encoder only (target T sg(z)), the decoder term the decoder
    only (input T sg(z), target T sg(D(z))); neither term reaches the latent z of the unshifted pass."""
    torch.manual_seed(0)
    model = make_alias_free(V.small_vae((8, 16), groups=4))
    enc_names, dec_names = _encoder_and_decoder_params(model)
    x = signal.ideal_lowpass(torch.rand(2, 3, 16, 16) * 2 - 1, 0.8)
    for term in (0, 1):
        model.zero_grad(set_to_none=True)
        z = V.encode(model, x)
        z.retain_grad()
        losses = V.equivariance_losses(model, x, z, (4, -2))
        assert losses[term].item() > 0
        losses[term].backward()
        grads = _grads(model)
        trained, untouched = (enc_names, dec_names) if term == 0 else (dec_names, enc_names)
        assert all(grads[n] is None for n in untouched), [n for n in untouched if grads[n] is not None]
        assert sum(float(grads[n].abs().sum()) for n in trained if grads[n] is not None) > 0
        assert z.grad is None  # the unshifted pass is a constant for both terms
    # zero shift: the shifted pass equals the target pass, so both terms vanish
    enc0, dec0 = V.equivariance_losses(model, x, V.encode(model, x), (0, 0))
    assert enc0.item() < 1e-10 and dec0.item() < 1e-10


def _roll_crop(v, dy: int, dx: int):
    """Integer shift written out: content moves by (dy, dx) toward larger indices, the uncovered border is zero;
    returns (shifted, mask of the pixels that carry content)."""
    h, w = v.shape[-2:]
    out = torch.zeros_like(v)
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[..., yd, xd] = v[..., ys, xs]
    mask = torch.zeros(h, w, dtype=v.dtype)
    mask[yd, xd] = 1
    return out, mask


@pytest.mark.parametrize("d", [(4, -2), (-6, 2)])
def test_equivariance_terms_equal_the_loss_written_out_at_a_nonzero_shift(d):
    """Encoder term = masked MSE of E(T_d x) against T_{d/f} z, decoder term = masked MSE of D(T_{d/f} z) against
    T_d D(z), written out with integer rolls (image shift d, latent shift d/f = d/2): a sign error, d * f in place
    of d / f or a wrong mask fails."""
    torch.manual_seed(0)
    model = V.small_vae((8, 16), groups=4).eval()
    assert V.factor(model) == 2
    x = signal.ideal_lowpass(torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1, 0.8)
    dl = (d[0] // 2, d[1] // 2)
    with torch.no_grad():
        z = V.encode(model, x)
        enc, dec = V.equivariance_losses(model, x, z, d)
        xs, _ = _roll_crop(x, *d)
        zt, mz = _roll_crop(z, *dl)
        enc_hand = ((V.encode(model, xs) - zt) ** 2 * mz).sum() / (mz.sum() * z.shape[0] * z.shape[1])
        xt, mx = _roll_crop(V.decode(model, z), *d)
        dec_hand = ((V.decode(model, zt) - xt) ** 2 * mx).sum() / (mx.sum() * x.shape[0] * x.shape[1])
        # the wrong conventions are far from the right one here (so the comparison can tell them apart)
        wrong, _ = V.equivariance_losses(model, x, z, (-d[0], -d[1]))
    assert enc_hand > 1e-4 and dec_hand > 1e-4
    torch.testing.assert_close(enc, enc_hand, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(dec, dec_hand, rtol=1e-4, atol=1e-7)
    assert abs(float(wrong) - float(enc_hand)) > 0.05 * float(enc_hand)


def test_decoder_term_uses_the_given_reconstruction_as_its_target():
    torch.manual_seed(0)
    model = V.small_vae((8, 16), groups=4)
    x = signal.ideal_lowpass(torch.rand(2, 3, 16, 16) * 2 - 1, 0.8)
    with torch.no_grad():
        z = V.encode(model, x)
        _, dec = V.equivariance_losses(model, x, z, (4, 0))
        _, dec_given = V.equivariance_losses(model, x, z, (4, 0), recon=V.decode(model, z))
        _, dec_other = V.equivariance_losses(model, x, z, (4, 0), recon=V.decode(model, z) + 0.5)
    assert torch.allclose(dec, dec_given, rtol=1e-5, atol=1e-8)
    assert dec_other > dec + 0.1  # a target offset by 0.5 adds about 0.25 to the masked MSE


def test_vae_loss_samples_the_posterior_and_sums_the_kl_per_image():
    """Defaults follow the reference trainer: the decoder sees mean + std * eps (eps from the generator) and the KL
    is summed over the latent and averaged over the batch; the options use the mean and divide by the image size."""
    torch.manual_seed(0)
    model = V.small_vae((8, 16), groups=4).train()
    with torch.no_grad():  # a posterior with a clearly non-zero spread, so a sample differs from the mean
        model.quant_conv.bias[4:].fill_(0.5)
    x = _images(2, 16)
    with torch.no_grad():
        dist = model.encode(x).latent_dist
        eps = torch.randn(dist.mean.shape, generator=torch.Generator().manual_seed(3))
        sampled = torch.mean((V.decode(model, dist.mean + dist.std * eps) - x) ** 2)
        from_mean = torch.mean((V.decode(model, dist.mean) - x) ** 2)
        kl_sum = dist.kl().sum() / 2
        _, logs = V.vae_loss(model, x, torch.Generator().manual_seed(3))
        _, logs_mean = V.vae_loss(model, x, torch.Generator().manual_seed(3), posterior="mean", kl_norm="pixel")
    assert abs(sampled - from_mean) > 1e-3  # the test can tell the two apart
    assert math.isclose(logs["mse"], float(sampled), rel_tol=1e-5)
    assert math.isclose(logs_mean["mse"], float(from_mean), rel_tol=1e-5)
    assert math.isclose(logs["kl"], float(kl_sum), rel_tol=1e-5)
    assert math.isclose(logs_mean["kl"], float(kl_sum) / (3 * 16 * 16), rel_tol=1e-5)
    with pytest.raises(ValueError, match="posterior"):
        V.vae_loss(model, x, None, posterior="mode")
    with pytest.raises(ValueError, match="kl_norm"):
        V.vae_loss(model, x, None, kl_norm="latent")


def test_vae_loss_reports_all_terms():
    """Every logged term equals its definition, computed from the generator's draws replayed by hand (posterior
    noise, then the image shift, then the shifted pass's posterior noise), and the total is their weighted sum."""
    torch.manual_seed(0)
    model = V.small_vae((8, 16), groups=4).train()
    with torch.no_grad():
        model.quant_conv.bias[4:].fill_(0.5)  # a clear posterior spread: a sample differs from the mean
    x = _images(2, 16)
    kl_w, eq_w = 0.3, 2.0
    loss, logs = V.vae_loss(model, x, torch.Generator().manual_seed(7), kl_weight=kl_w, eq_weight=eq_w)
    assert set(logs) == {"mse", "kl", "eq_enc", "eq_dec"}
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        dist = model.encode(x).latent_dist
        z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=g)
        recon = V.decode(model, z)
        mse = ((recon - x) ** 2).mean()
        var = dist.std ** 2
        kl = 0.5 * (dist.mean ** 2 + var - 1 - torch.log(var)).sum() / 2
        d = tuple(torch.randint(-6, 7, (2,), generator=g).tolist())  # floor(0.375 * 16) = 6
        f = V.factor(model)
        dl = (d[0] / f, d[1] / f)
        xs, _ = signal.shift(x, d, mode="crop")
        zt = signal.fourier_shift(z, dl)
        mz = signal.valid_mask(z.shape[-2:], dl).expand_as(z)
        shifted = model.encode(xs).latent_dist
        zs = shifted.mean + shifted.std * torch.randn(shifted.mean.shape, generator=g)
        enc = ((zs - zt) ** 2 * mz).sum() / mz.sum()
        zin, _ = signal.shift(z, dl, mode="crop")
        mx = signal.valid_mask(x.shape[-2:], d).expand_as(x)
        dec = ((V.decode(model, zin) - signal.fourier_shift(recon, d)) ** 2 * mx).sum() / mx.sum()
    assert d != (0, 0) and float(enc) > 1e-4 and float(dec) > 1e-4
    for key, value in (("mse", mse), ("kl", kl), ("eq_enc", enc), ("eq_dec", dec)):
        assert math.isclose(logs[key], float(value), rel_tol=1e-4), key
    assert math.isclose(float(loss.detach()), float(mse + kl_w * kl + eq_w * (enc + dec)), rel_tol=1e-4)


# --- pretrained loading ---------------------------------------------------------------------------------------


def _images(n=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return signal.ideal_lowpass(torch.rand(n, 3, size, size, generator=g) * 2 - 1, 0.6).clamp(-1, 1)


def test_load_pretrained_vae_local_alias_free_and_offline_errors(tmp_path, monkeypatch):
    torch.manual_seed(0)
    x = _images()
    plain = V.small_vae((8, 16), groups=4).eval()
    plain.save_pretrained(tmp_path / "plain")
    loaded = V.load_pretrained_vae(str(tmp_path / "plain"))
    with torch.no_grad():
        assert torch.equal(V.decode(loaded, V.encode(loaded, x)), V.decode(plain, V.encode(plain, x)))
    af = make_alias_free(V.small_vae((8, 16), groups=4)).eval()
    save_alias_free(af, tmp_path / "af")
    loaded = V.load_pretrained_vae(str(tmp_path / "af"))
    assert getattr(loaded, "_alias_free_patch", None) == af._alias_free_patch
    with torch.no_grad():
        assert torch.equal(V.decode(loaded, V.encode(loaded, x)), V.decode(af, V.encode(af, x)))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="vae_pretrained") as info:
        V.load_pretrained_vae("afcore-test/no-such-vae:vae", local_files_only=True)
    assert "afcore-test/no-such-vae" in str(info.value) and "local directory" in str(info.value)
    with pytest.raises(RuntimeError, match="vae_pretrained"):
        V.load_pretrained_vae("afcore-test/no-such-vae")  # HF_HUB_OFFLINE decides local_files_only
    with pytest.raises(FileNotFoundError, match="vae_pretrained"):
        V.load_pretrained_vae("./nope")
    with pytest.raises(ValueError, match="vae_pretrained"):
        V.load_pretrained_vae("")
