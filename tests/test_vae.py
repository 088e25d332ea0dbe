"""AF-VAE loss pieces: shift sampling, stop-gradient targets, masks."""
from __future__ import annotations

import math

import pytest
import torch

from afcore import metrics, signal, vae as V
from afcore.surgery import make_alias_free, save_alias_free


def test_image_shifts_are_integers_within_the_reference_range():
    g = torch.Generator().manual_seed(0)
    shifts = [V.random_image_shift(32, g) for _ in range(200)]
    assert all(isinstance(a, int) and abs(a) <= 12 and abs(b) <= 12 for a, b in shifts)
    assert len(set(shifts)) > 50


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
    torch.manual_seed(0)
    model = V.small_vae((8, 16), groups=4).train()
    loss, logs = V.vae_loss(model, torch.rand(2, 3, 16, 16) * 2 - 1, torch.Generator().manual_seed(0), eq_weight=1.0)
    assert set(logs) == {"mse", "kl", "eq_enc", "eq_dec"} and torch.isfinite(loss)


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
