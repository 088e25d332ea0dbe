"""AF-VAE loss pieces: shift sampling, stop-gradient targets, masks."""
from __future__ import annotations

import torch

from afcore import signal, vae as V
from afcore.surgery import make_alias_free


def test_image_shifts_are_integers_within_the_reference_range():
    g = torch.Generator().manual_seed(0)
    shifts = [V.random_image_shift(32, g) for _ in range(200)]
    assert all(isinstance(a, int) and abs(a) <= 12 and abs(b) <= 12 for a, b in shifts)
    assert len(set(shifts)) > 50


def test_equivariance_terms_backpropagate_only_through_the_shifted_pass():
    torch.manual_seed(0)
    model = make_alias_free(V.small_vae((8, 16), groups=4))
    x = signal.ideal_lowpass(torch.rand(2, 3, 16, 16) * 2 - 1, 0.8)
    z = V.encode(model, x)
    enc, dec = V.equivariance_losses(model, x, z, (4, -2))
    assert enc.item() >= 0 and dec.item() >= 0
    (enc + dec).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    # zero shift: the shifted pass equals the target pass, so both terms vanish
    enc0, dec0 = V.equivariance_losses(model, x, V.encode(model, x), (0, 0))
    assert enc0.item() < 1e-10 and dec0.item() < 1e-10


def test_vae_loss_reports_all_terms():
    torch.manual_seed(0)
    model = V.small_vae((8, 16), groups=4).train()
    loss, logs = V.vae_loss(model, torch.rand(2, 3, 16, 16) * 2 - 1, torch.Generator().manual_seed(0), eq_weight=1.0)
    assert set(logs) == {"mse", "kl", "eq_enc", "eq_dec"} and torch.isfinite(loss)
