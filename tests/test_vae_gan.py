"""AF-VAE add-ons (afcore.vae_gan): perceptual distance, patch discriminator, hinge GAN, the full wrapped loss."""
from __future__ import annotations

import math

import pytest
import torch

from afcore import metrics, signal, vae as V, vae_gan as G


def _images(n=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return signal.ideal_lowpass(torch.rand(n, 3, size, size, generator=g) * 2 - 1, 0.6).clamp(-1, 1)


def test_perceptual_distance_is_a_frozen_monotone_distance(tmp_path):
    feats = G.PerceptualFeatures()
    x = _images(3)
    assert torch.equal(G.perceptual_distance(feats, x, x), torch.zeros(3))
    y = _images(3, seed=1)
    d = G.perceptual_distance(feats, x, y)
    assert d.shape == (3,) and torch.all(d > 0)
    assert torch.allclose(d, G.perceptual_distance(feats, y, x))
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(x.shape, generator=g)
    levels = [G.perceptual_distance(feats, x, x + s * noise) for s in (0.02, 0.1, 0.4)]
    assert torch.all(levels[0] < levels[1]) and torch.all(levels[1] < levels[2])
    # seeded: the same weights every time; frozen: no parameter takes gradients, the input does
    again = G.PerceptualFeatures().state_dict().values()
    assert all(torch.equal(a, b) for a, b in zip(feats.state_dict().values(), again))
    feats.train()
    assert not feats.training and not any(p.requires_grad for p in feats.parameters())
    xr = x.clone().requires_grad_(True)
    G.perceptual_distance(feats, xr, y).sum().backward()
    assert xr.grad is not None and xr.grad.abs().sum() > 0
    assert all(p.grad is None for p in feats.parameters())
    # a state dict plugs in through weights_path; a missing file is an error naming the parameter
    other = G.PerceptualFeatures(seed=5)
    torch.save(other.state_dict(), tmp_path / "w.pt")
    loaded = G.PerceptualFeatures(weights_path=str(tmp_path / "w.pt"))
    assert torch.equal(G.perceptual_distance(loaded, x, y), G.perceptual_distance(other, x, y))
    with pytest.raises(FileNotFoundError, match="weights_path"):
        G.PerceptualFeatures(weights_path=str(tmp_path / "missing.pt"))


def test_patch_discriminator_alias_free_adds_no_parameters_and_is_more_shift_equivariant():
    torch.set_num_threads(1)
    shapes = {}
    for af in (False, True):
        torch.manual_seed(1)
        shapes[af] = {k: v.shape for k, v in G.PatchDiscriminator((32, 64, 128), alias_free=af).state_dict().items()}
    assert shapes[False] == shapes[True]
    x = signal.ideal_lowpass(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)), 0.5)
    for weights_seed in (1, 2, 3):  # the margin must hold for any initialisation, not for one lucky draw
        crop, interior = {}, {}
        for af in (False, True):
            torch.manual_seed(weights_seed)
            disc = G.PatchDiscriminator((32, 64, 128), alias_free=af).eval()
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
        G.PatchDiscriminator(())


def test_hinge_losses_on_constructed_logits():
    two, zero = torch.full((2, 1, 4, 4), 2.0), torch.zeros(2, 1, 4, 4)
    assert G.hinge_d_loss(two, -two).item() == 0.0
    assert G.hinge_d_loss(zero, zero).item() == 2.0
    assert G.hinge_d_loss(-two, two).item() == 6.0
    assert G.hinge_g_loss(two).item() == -2.0 and G.hinge_g_loss(-two).item() == 2.0


def _wrapped(af=False):
    torch.manual_seed(0)
    return G.VAEWithDiscriminator(V.small_vae((8, 16), groups=4), G.PatchDiscriminator((8, 16), alias_free=af)).train()


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
    feats = G.PerceptualFeatures()
    x = _images()
    loss, logs = G.vae_gan_loss(model, x, torch.Generator().manual_seed(0), eq_weight=1.0, perceptual_weight=1.0,
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
    _, logs = G.vae_gan_loss(model, x, None, perceptual_weight=1.0, perceptual=feats, gan_weight=0.5, gan_start=10,
                             step=3)
    assert set(logs) == {"mse", "kl", "perc"}
    _, logs = G.vae_gan_loss(model, x, None, gan_weight=0.5, adaptive_gan_weight=False)
    assert logs["gan_w"] == 0.5
    with pytest.raises(ValueError, match="perceptual"):
        G.vae_gan_loss(model, x, None, perceptual_weight=1.0)
    with pytest.raises(ValueError, match="discriminator"):
        G.vae_gan_loss(model.vae, x, None, gan_weight=0.5)
    with pytest.raises(ValueError, match="discriminator"):
        G.vae_gan_loss(G.VAEWithDiscriminator(model.vae, None), x, None, gan_weight=0.5)


def test_adaptive_weight_matches_the_gradient_norm_ratio():
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    nll, g = (w ** 2).sum(), 0.5 * w.sum()  # grads (2, 4) and (0.5, 0.5)
    expected = math.sqrt(20) / (math.sqrt(0.5) + 1e-4)
    assert abs(G.adaptive_weight(nll, g, w).item() - expected) < 1e-4


def test_vae_gan_loss_without_add_ons_is_the_core_loss_and_adds_terms_in_the_reference_order():
    """With zero perceptual and GAN weights the wrapped loss is ``afcore.vae.vae_loss`` bit for bit (same draws from
    the generator); with them, the total is (mse + w_p perc) + kl_w kl + eq + w_g g + d, as the reference sums it."""
    model = _wrapped(af=False)
    feats = G.PerceptualFeatures()
    x = _images()
    with torch.no_grad():
        core, core_logs = V.vae_loss(model.vae, x, torch.Generator().manual_seed(4), eq_weight=1.0)
        full, full_logs = G.vae_gan_loss(model, x, torch.Generator().manual_seed(4), eq_weight=1.0)
        assert torch.equal(core, full) and core_logs == full_logs
        loss, logs = G.vae_gan_loss(model, x, torch.Generator().manual_seed(4), kl_weight=0.01, eq_weight=1.0,
                                    perceptual_weight=0.5, perceptual=feats, gan_weight=0.25)
    assert list(logs) == ["mse", "kl", "perc", "eq_enc", "eq_dec", "g", "d", "gan_w"]
    assert logs["mse"] == core_logs["mse"] and logs["eq_enc"] == core_logs["eq_enc"]
    assert logs["gan_w"] == 0.25  # no gradients: the adaptive weight is off
    expected = ((logs["mse"] + 0.5 * logs["perc"]) + 0.01 * logs["kl"] + logs["eq_enc"] + logs["eq_dec"]
                + 0.25 * logs["g"] + logs["d"])
    assert math.isclose(float(loss), expected, rel_tol=1e-5)


def test_vae_imports_nothing_from_vae_gan():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(V))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "vae_gan" not in imported and "afcore.vae_gan" not in imported | modules
