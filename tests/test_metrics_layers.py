"""Metrics on constructed inputs; the alias-free layers are parameter-free and actually alias-free."""
from __future__ import annotations

import math

import pytest
import torch

from afcore import layers as L
from afcore import metrics as M
from afcore import signal as S


def test_psnr_of_a_known_error():
    a = torch.zeros(2, 1, 4, 4)
    assert M.psnr(a, a + 0.1).item() == pytest.approx(20 * math.log10(2) - 10 * math.log10(0.01))
    assert M.psnr(a, a + 0.1, peak=1.0).item() == pytest.approx(20.0)


def test_masked_psnr_pools_over_the_mask():
    a = torch.zeros(2, 3, 4, 4)
    b = a.clone()
    b[:, :, :2] = 1.0  # error 1 on the top half, 0 elsewhere
    top = torch.zeros(4, 4)
    top[:2] = 1
    assert M.mse(a, b, top).item() == pytest.approx(1.0)
    assert M.mse(a, b, 1 - top).item() == pytest.approx(0.0)
    assert M.mse(a, b).item() == pytest.approx(0.5)
    per = M.psnr(a, b * torch.tensor([1.0, 0.5]).view(2, 1, 1, 1), per_sample=True)
    assert per[1] - per[0] == pytest.approx(10 * math.log10(4))


def test_spsnr_is_infinite_like_for_an_equivariant_map_and_low_for_a_fixed_pattern():
    x = S.ideal_lowpass(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)), 0.5)
    identity = M.spsnr(lambda t: t, x, (0.5, -0.25), mode="circular")
    assert identity > 100
    pattern = torch.randn(32, 32, generator=torch.Generator().manual_seed(1))
    sticky = M.spsnr(lambda t: t + pattern, x, (0.5, -0.25), mode="circular")
    assert sticky < 20
    # the decoder-style scale: an ideal x2 up-sampler is exactly equivariant with scale 2
    up = M.spsnr(lambda t: S.upsample(t, 2), x, (0.375, 1.25), scale=2.0, mode="circular")
    assert up > 100


def test_filtered_activation_is_parameter_free_and_beats_the_plain_one_by_a_wide_margin():
    x = S.ideal_lowpass(torch.randn(4, 8, 32, 32, generator=torch.Generator().manual_seed(0)), 0.8)
    for act in (torch.nn.GELU(), torch.nn.SiLU(), torch.nn.ReLU()):
        fa = L.FilteredActivation(act)
        assert sum(p.numel() for p in fa.parameters()) == 0 and not fa.state_dict()
        plain = M.spsnr(act, x, (0.5, 0.5), mode="circular")
        filtered = M.spsnr(fa, x, (0.5, 0.5), mode="circular")
        assert filtered - plain > 15, (act, plain, filtered)


def test_eq_metrics_rank_equivariant_above_sticky_maps():
    g = torch.Generator().manual_seed(0)
    x = S.ideal_lowpass(torch.randn(2, 3, 32, 32, generator=g), 0.5)
    pattern = 0.5 * torch.randn(32, 32, generator=g)
    assert M.eq_t(lambda t: t, x, generator=g) > 100
    assert M.eq_t(lambda t: t + pattern, x, generator=g) < 20
    assert M.eq_t_frac(lambda t: t, x, generator=g) > 30
    assert M.eq_r(lambda t: t, x, n=3, generator=g) > 100
    assert M.eq_r(lambda t: t + pattern, x, n=3, generator=g) < 20


@pytest.mark.parametrize("method,kw", [("ideal", {}), ("kaiser", dict(numtaps=3, beta=1.0, radial=True))])
def test_alias_free_resamplers_are_parameter_free_and_keep_amplitude(method, kw):
    down, up = L.AliasFreeDownsample(2, method, **kw), L.AliasFreeUpsample(2, method, **kw)
    assert not list(down.parameters()) and not list(up.parameters())
    assert not down.state_dict() and not up.state_dict()
    const = torch.full((1, 5, 8, 12), 0.3, dtype=torch.float64)
    # the mean is kept exactly; a short FIR filter leaves a polyphase ripple around it, the ideal one none
    assert up(const).mean().item() == pytest.approx(0.3)
    torch.testing.assert_close(down(const), torch.full((1, 5, 4, 6), 0.3, dtype=torch.float64))
    if method == "ideal":
        torch.testing.assert_close(up(const), torch.full((1, 5, 16, 24), 0.3, dtype=torch.float64))


def test_ideal_alias_free_downsample_layer_is_exactly_equivariant():
    x = S.ideal_lowpass(torch.randn(2, 4, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3)), 0.45)
    layer = L.AliasFreeDownsample(2, "ideal")
    d = (0.75, -1.5)
    torch.testing.assert_close(layer(S.fourier_shift(x, d)), S.fourier_shift(layer(x), (d[0] / 2, d[1] / 2)))


@pytest.mark.parametrize("radial", [True, False])
@pytest.mark.parametrize("padding", ["zeros", "circular"])
@pytest.mark.parametrize("numtaps", [3, 7])
def test_polyphase_kaiser_layers_equal_the_filter_then_resample_definition(radial, padding, numtaps):
    x = torch.randn(2, 3, 8, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    kw = dict(numtaps=numtaps, beta=1.0, radial=radial, padding=padding)
    down = L.AliasFreeDownsample(2, "kaiser", **kw)
    up = L.AliasFreeUpsample(2, "kaiser", **kw)
    torch.testing.assert_close(down(x), S.downsample(x, 2, method="kaiser", impl="ref", **kw))
    torch.testing.assert_close(up(x), S.upsample(x, 2, method="kaiser", impl="ref", **kw))


# ------------------------------------------------------------ exact integer-shift equivariance (circular padding)
CIRCULAR_FILTERS = {
    "ideal": dict(method="ideal"),
    "ideal_half_nyquist": dict(method="ideal", nyquist="half"),
    "kaiser13": dict(method="kaiser", numtaps=13, beta=8.0),
    "jinc3_anjum": dict(method="kaiser", numtaps=3, beta=1.0, radial=True),
}


@pytest.mark.parametrize("impl", ["fast", "ref"])
@pytest.mark.parametrize("name", list(CIRCULAR_FILTERS))
def test_alias_free_layers_commute_exactly_with_integer_rolls(name, impl):
    """Any input (no band limit needed): rolling by d before the layer equals rolling its output by d (activation),
    2d (x2 up-sampling) or d/2 (x2 down-sampling, d a multiple of 2)."""
    kw = CIRCULAR_FILTERS[name]
    x = torch.randn(2, 3, 12, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    act = L.FilteredActivation(torch.nn.SiLU(), impl=impl, **kw)
    up = L.AliasFreeUpsample(2, impl=impl, **kw)
    down = L.AliasFreeDownsample(2, impl=impl, **kw)
    tol = dict(rtol=0, atol=1e-12)
    for d in [(1, 0), (0, -3), (5, 7), (-2, 4)]:
        roll = lambda t, k=1: torch.roll(t, (k * d[0], k * d[1]), (-2, -1))  # noqa: E731
        torch.testing.assert_close(act(roll(x)), roll(act(x)), **tol)
        torch.testing.assert_close(up(roll(x)), roll(up(x), 2), **tol)
        even = (2 * d[0], 2 * d[1])
        torch.testing.assert_close(down(torch.roll(x, even, (-2, -1))), roll(down(x)), **tol)
