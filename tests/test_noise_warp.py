"""afcore.noise_warp: the distributions of warped noise (integral noise, GP/RFF noise, baselines)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from afcore import flow as FL
from afcore import noise_warp as NW
from afcore.signal import radial_power_spectrum


def _const_flow(dy, dx, h, w, b=1):
    f = torch.zeros(b, 2, h, w)
    f[:, 0], f[:, 1] = dy, dx
    return f


def test_conditional_upsample_keeps_block_means_and_is_white():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 1, 2, 2, generator=g)
    sub = NW.conditional_upsample(x, 8, g)
    sums = sub.reshape(4096, 1, 2, 8, 2, 8).sum(dim=(3, 5)) / 8
    torch.testing.assert_close(sums, x, atol=1e-5, rtol=0)
    v = sub.var(0)  # per sub-pixel variance over draws
    assert float((v - 1).abs().max()) < 0.1 and abs(float(v.mean()) - 1) < 0.05
    a = sub[:, 0, 0, :8].reshape(4096, 8)  # first sub-row of a block
    corr = torch.corrcoef(a.T)
    off = corr[~torch.eye(8, dtype=bool)]
    assert float(off.abs().max()) < 0.05


def test_integral_warp_identity_and_integer_shift():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 12, 16, generator=g)
    torch.testing.assert_close(NW.integral_warp(x, torch.zeros(2, 2, 12, 16), 8, g), x, atol=1e-5, rtol=0)
    y = NW.integral_warp(x, _const_flow(2, -3, 12, 16, b=2), 8, g)  # content moves by (2, -3)
    ref = torch.roll(x, (2, -3), dims=(-2, -1))
    torch.testing.assert_close(y[..., 2:, :-3], ref[..., 2:, :-3], atol=1e-5, rtol=0)
    fresh = y[..., :2, :]  # disoccluded rows: new noise, not the wrapped old rows
    assert not torch.allclose(fresh, ref[..., :2, :])


def test_integral_warp_of_a_rotation_is_white_unit_noise():
    g = torch.Generator().manual_seed(2)
    m = FL.motion("rotate", 16, degrees=10.0)
    f = m.flow(0, 1, (16, 16))  # one flow for the whole batch
    y = NW.integral_warp(torch.randn(2000, 1, 16, 16, generator=g), f, 8, g)
    s = NW.noise_stats(y)
    assert abs(s["mean"]) < 0.05 and abs(s["var"] - 1) < 0.05
    assert abs(s["corr_x"]) < 0.05 and abs(s["corr_y"]) < 0.05
    power = s["spectrum"][1]
    assert float((power - 1).abs().max()) < 0.1


def test_bilinear_baseline_loses_variance_at_half_pixel_offsets():
    g = torch.Generator().manual_seed(3)
    shape = (4000, 1, 8, 8)
    to_first = torch.stack([torch.zeros(4000, 2, 8, 8), _const_flow(0.5, 0.5, 8, 8, b=4000)])
    y = NW.noise_video("bilinear", shape, to_first, generator=g)[1][..., :-1, :-1]
    assert float(y.var()) < 0.9  # 4 x (1/4)^2 = 0.25 in theory
    y = NW.noise_video("nearest", shape, to_first, generator=g)[1]
    assert abs(float(y.var()) - 1) < 0.05


def _truncated_se_covariance(r, ell, trunc, n=400):
    """E[cos(z_x r)] for z ~ N(0, ell^-2 I) restricted to |z| <= trunc / ell, by polar quadrature."""
    rho = np.linspace(0, trunc, n + 1)[1:] - trunc / (2 * n)
    th = np.linspace(0, 2 * np.pi, 4 * n, endpoint=False)
    R, T = np.meshgrid(rho, th, indexing="ij")
    wgt = R * np.exp(-R ** 2 / 2)
    return float((wgt * np.cos(R * np.cos(T) * r / ell)).sum() / wgt.sum())


def test_rff_noise_unit_variance_and_kernel():
    g = torch.Generator().manual_seed(4)
    ell = NW.gp_length_scale()
    rff = NW.RFFNoise(32, 1, ell, features=3000, truncation=2.0, generator=g)
    x = rff(grid_size=(24, 24))
    assert abs(float(x.var()) - 1) < 0.05 and abs(float(x.mean())) < 0.05
    xc = x[:, 0]
    for lag in range(4):
        emp = float((xc[:, :, lag:] * xc[:, :, :24 - lag]).mean() / (xc ** 2).mean())
        exact = _truncated_se_covariance(lag, ell, 2.0)
        assert abs(emp - exact) < 0.05, (lag, emp, exact)
        # truncation at 2 sigma moves the kernel away from exp(-r^2 / 2 l^2) by less than 0.15 at these lags
        assert abs(exact - math.exp(-lag ** 2 / (2 * ell ** 2))) < 0.15
    # every frequency at or below Nyquist: all power representable on the grid
    assert float(rff.z.norm(dim=-1).max()) <= math.pi + 1e-5
    with pytest.raises(ValueError, match="features"):
        NW.RFFNoise(1, 1, features=0)


def test_gp_warp_integer_translation_is_a_roll_and_composition_agrees():
    g = torch.Generator().manual_seed(5)
    v = FL.synthetic_video("pan", size=16, frames=3, velocity=(1.0, 2.0))
    to_first = v.flows("to_first")[:, None]
    noise = NW.noise_video("gp_warp", (1, 4, 16, 16), to_first, generator=g, rff_features=500)
    assert torch.isfinite(noise).all()
    torch.testing.assert_close(noise[1][..., 1:, 2:], noise[0][..., :-1, :-2], atol=1e-4, rtol=0)
    torch.testing.assert_close(noise[2][..., 2:, 4:], noise[0][..., :-2, :-4], atol=1e-4, rtol=0)
    # frame-by-frame composition of the (rotation) flows gives the same re-evaluated noise as the analytic map
    v = FL.synthetic_video("rotate", size=16, frames=3, degrees=5.0)
    prev = v.flows("prev")
    back01, back12 = v.flow(1, 0), v.flow(2, 1)
    composed, inside = FL.compose(back12, back01)
    assert float((composed - v.flow(2, 0))[inside.expand(-1, 2, -1, -1).bool()].abs().max()) < 1e-3
    rff = NW.RFFNoise(1, 2, features=500, generator=g)
    base = FL.grid(16, 16)[None]
    a, b = rff(base + composed), rff(base + v.flow(2, 0))
    m = inside.bool().expand_as(a)
    torch.testing.assert_close(a[m], b[m], atol=5e-3, rtol=0)
    assert prev.shape == (2, 2, 16, 16)


def test_noise_video_methods_shapes_and_fixed_resample():
    g = torch.Generator().manual_seed(6)
    v = FL.synthetic_video("zoom", size=16, frames=3)
    to_first, prev = v.flows("to_first")[:, None], v.flows("prev")[:, None]
    for m in NW.METHODS:
        n = NW.noise_video(m, (1, 2, 16, 16), to_first, prev, generator=g, rff_features=200)
        assert n.shape == (3, 1, 2, 16, 16) and torch.isfinite(n).all(), m
        if m.endswith("fixed"):
            assert torch.equal(n[0], n[2])
        if m.endswith("resample"):
            assert float((n[0] - n[2]).abs().mean()) > 0.5
    with pytest.raises(ValueError, match="method"):
        NW.noise_video("polygon", (1, 2, 16, 16), to_first)
    with pytest.raises(ValueError, match="prev_flows"):
        NW.noise_video("hiwyn", (1, 2, 16, 16), to_first)


def test_noise_stats_of_white_noise():
    s = NW.noise_stats(torch.randn(500, 1, 16, 16, generator=torch.Generator().manual_seed(7)))
    assert abs(s["var"] - 1) < 0.03 and abs(s["corr_x"]) < 0.03
    f, p = radial_power_spectrum(torch.randn(500, 16, 16))
    assert float((p - 1).abs().max()) < 0.15
