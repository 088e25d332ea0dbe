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


# --- training pieces: perceptual distance, patch discriminator, hinge GAN, wrapped loss, pretrained loading -------


def _images(n=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return signal.ideal_lowpass(torch.rand(n, 3, size, size, generator=g) * 2 - 1, 0.6).clamp(-1, 1)


def test_perceptual_distance_is_a_frozen_monotone_distance(tmp_path):
    feats = V.PerceptualFeatures()
    x = _images(3)
    assert torch.equal(V.perceptual_distance(feats, x, x), torch.zeros(3))
    y = _images(3, seed=1)
    d = V.perceptual_distance(feats, x, y)
    assert d.shape == (3,) and torch.all(d > 0)
    assert torch.allclose(d, V.perceptual_distance(feats, y, x))
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(x.shape, generator=g)
    levels = [V.perceptual_distance(feats, x, x + s * noise) for s in (0.02, 0.1, 0.4)]
    assert torch.all(levels[0] < levels[1]) and torch.all(levels[1] < levels[2])
    # seeded: the same weights every time; frozen: no parameter takes gradients, the input does
    again = V.PerceptualFeatures().state_dict().values()
    assert all(torch.equal(a, b) for a, b in zip(feats.state_dict().values(), again))
    feats.train()
    assert not feats.training and not any(p.requires_grad for p in feats.parameters())
    xr = x.clone().requires_grad_(True)
    V.perceptual_distance(feats, xr, y).sum().backward()
    assert xr.grad is not None and xr.grad.abs().sum() > 0
    assert all(p.grad is None for p in feats.parameters())
    # a state dict plugs in through weights_path; a missing file is an error naming the parameter
    other = V.PerceptualFeatures(seed=5)
    torch.save(other.state_dict(), tmp_path / "w.pt")
    loaded = V.PerceptualFeatures(weights_path=str(tmp_path / "w.pt"))
    assert torch.equal(V.perceptual_distance(loaded, x, y), V.perceptual_distance(other, x, y))
    with pytest.raises(FileNotFoundError, match="weights_path"):
        V.PerceptualFeatures(weights_path=str(tmp_path / "missing.pt"))


def test_patch_discriminator_alias_free_adds_no_parameters_and_is_more_shift_equivariant():
    torch.set_num_threads(1)
    shapes = {}
    for af in (False, True):
        torch.manual_seed(1)
        shapes[af] = {k: v.shape for k, v in V.PatchDiscriminator((32, 64, 128), alias_free=af).state_dict().items()}
    assert shapes[False] == shapes[True]
    x = signal.ideal_lowpass(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)), 0.5)
    for weights_seed in (1, 2, 3):  # the margin must hold for any initialisation, not for one lucky draw
        crop, interior = {}, {}
        for af in (False, True):
            torch.manual_seed(weights_seed)
            disc = V.PatchDiscriminator((32, 64, 128), alias_free=af).eval()
            f = disc.factor
            assert f == 4
            with torch.no_grad():
                y = disc(x)
                assert y.shape == (2, 1, 16, 16)
                # image shift of half the down-sampling factor = half a logit-map pixel
                crop[af] = float(metrics.spsnr(disc, x, (f / 2, f / 2), scale=1 / f, peak=1.0))
                ys = disc(torch.roll(x, (f // 2, f // 2), (-2, -1)))
                target = signal.fourier_shift(y, (0.5, 0.5))
                peak = float(y.max() - y.min())
                interior[af] = float(metrics.psnr(ys[..., 4:-4, 4:-4], target[..., 4:-4, 4:-4], peak=peak))
        # measured (seed 1) about +15 dB (crop SPSNR) and +20 dB (interior, circular shift); a clear margin
        assert crop[True] > crop[False] + 8, (weights_seed, crop)
        assert interior[True] > interior[False] + 10, (weights_seed, interior)
    with pytest.raises(ValueError, match="channels"):
        V.PatchDiscriminator(())


def test_hinge_losses_on_constructed_logits():
    two, zero = torch.full((2, 1, 4, 4), 2.0), torch.zeros(2, 1, 4, 4)
    assert V.hinge_d_loss(two, -two).item() == 0.0
    assert V.hinge_d_loss(zero, zero).item() == 2.0
    assert V.hinge_d_loss(-two, two).item() == 6.0
    assert V.hinge_g_loss(two).item() == -2.0 and V.hinge_g_loss(-two).item() == 2.0


def _wrapped(af=False):
    torch.manual_seed(0)
    return V.VAEWithDiscriminator(V.small_vae((8, 16), groups=4), V.PatchDiscriminator((8, 16), alias_free=af)).train()


def test_generator_and_discriminator_terms_train_only_their_player():
    model = _wrapped()
    x = _images()
    recon = V.decode(model.vae, V.encode(model.vae, x))
    model.generator_loss(recon).backward()
    assert all(p.grad is None for p in model.disc.parameters())
    assert all(p.requires_grad for p in model.disc.parameters())  # restored after the generator pass
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.vae.parameters())
    model.zero_grad(set_to_none=True)
    recon = V.decode(model.vae, V.encode(model.vae, x))
    model.discriminator_loss(x, recon).backward()
    assert all(p.grad is None for p in model.vae.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.disc.parameters())


def test_full_vae_loss_backpropagates_with_every_term():
    model = _wrapped(af=True)
    feats = V.PerceptualFeatures()
    x = _images()
    loss, logs = V.vae_loss(model, x, torch.Generator().manual_seed(0), eq_weight=1.0, perceptual_weight=1.0,
                            perceptual=feats, gan_weight=0.5, gan_start=0, step=0)
    assert set(logs) == {"mse", "kl", "eq_enc", "eq_dec", "perc", "g", "d", "gan_w"}
    assert torch.isfinite(loss) and all(math.isfinite(v) for v in logs.values())
    assert 0 <= logs["gan_w"] <= 0.5 * 1e4
    loss.backward()
    for part in (model.vae, model.disc):
        grads = [p.grad for p in part.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in feats.parameters())
    # before gan_start the GAN terms are off; without the adaptive weight gan_w is gan_weight itself
    _, logs = V.vae_loss(model, x, None, perceptual_weight=1.0, perceptual=feats, gan_weight=0.5, gan_start=10, step=3)
    assert set(logs) == {"mse", "kl", "perc"}
    _, logs = V.vae_loss(model, x, None, gan_weight=0.5, adaptive_gan_weight=False)
    assert logs["gan_w"] == 0.5
    with pytest.raises(ValueError, match="perceptual"):
        V.vae_loss(model, x, None, perceptual_weight=1.0)
    with pytest.raises(ValueError, match="discriminator"):
        V.vae_loss(model.vae, x, None, gan_weight=0.5)
    with pytest.raises(ValueError, match="discriminator"):
        V.vae_loss(V.VAEWithDiscriminator(model.vae, None), x, None, gan_weight=0.5)


def test_adaptive_weight_matches_the_gradient_norm_ratio():
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    nll, g = (w ** 2).sum(), 0.5 * w.sum()  # grads (2, 4) and (0.5, 0.5)
    expected = math.sqrt(20) / (math.sqrt(0.5) + 1e-4)
    assert abs(V.adaptive_weight(nll, g, w).item() - expected) < 1e-4


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
