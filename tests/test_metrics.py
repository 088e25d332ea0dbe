"""afcore.metrics conventions: peak 'range', per-sample SPSNR, mean +- standard error, EQ-T_frac's Lanczos target."""
import math

import numpy as np
import pytest
import torch

from afcore import metrics as M
from afcore import signal as S

torch.set_num_threads(1)


def _lanczos_direct(x: np.ndarray, d: float, a: int = 3) -> np.ndarray:
    """Slow reference: out[i] = sum_m x[m] L(i - d - m) / sum_m L(i - d - m), circular, along the last axis."""
    n = x.shape[-1]
    out = np.zeros_like(x)
    for i in range(n):
        ms = np.arange(math.floor(i - d) - a + 1, math.floor(i - d) + a + 1)
        t = i - d - ms
        w = np.sinc(t) * np.sinc(t / a)
        out[..., i] = (x[..., ms % n] * w).sum(-1) / w.sum()
    return out


def test_lanczos_target_has_unit_dc_gain_and_matches_a_direct_evaluation():
    const = torch.full((1, 1, 16, 16), 0.7, dtype=torch.float64)
    for d in (0.5, 0.25, -1.3):
        torch.testing.assert_close(S.lanczos_shift(const, (d, d)), const, rtol=0, atol=1e-12)
    # the raw windowed-sinc taps lose 0.6% of a constant at a half-pixel shift: the bias the normalisation removes
    raw = S.lanczos_shift(const, (0.0, 0.5), normalize=False)
    assert float(raw.mean()) == pytest.approx(0.7 * 0.9939, rel=5e-4)
    g = torch.Generator().manual_seed(0)
    band = S.ideal_lowpass(torch.randn(2, 1, 24, 24, generator=g, dtype=torch.float64), 0.5)
    for d in (0.5, 0.3, -0.75):
        ours = S.lanczos_shift(band, (0.0, d)).numpy()
        np.testing.assert_allclose(ours, _lanczos_direct(band.numpy(), d), rtol=0, atol=1e-10)


def test_eq_t_frac_of_the_identity_is_not_capped_by_the_target_interpolator():
    g = torch.Generator().manual_seed(1)
    x = S.ideal_lowpass(torch.randn(4, 1, 64, 64, generator=g, dtype=torch.float64), 0.4) + 0.5
    normalised = M.eq_t_frac(lambda v: v, x, n=6, generator=torch.Generator().manual_seed(2))
    import afcore.signal as sig
    orig = sig.lanczos_shift
    try:
        sig.lanczos_shift = lambda v, d, a=3: orig(v, d, a, normalize=False)
        raw = M.eq_t_frac(lambda v: v, x, n=6, generator=torch.Generator().manual_seed(2))
    finally:
        sig.lanczos_shift = orig
    assert normalised > raw + 0.5  # the DC bias of un-normalised taps costs most of a dB here
    assert normalised > 50.0


def test_peak_range_uses_the_targets_per_sample_range_inside_the_mask():
    b = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    b[0, 0, 0, 0], b[1, 0, 0, 0] = 4.0, 1.0  # ranges 4 and 1
    a = b + 0.1
    out = M.psnr(a, b, peak="range", per_sample=True)
    expected = [20 * math.log10(r) - 10 * math.log10(0.01) for r in (4.0, 1.0)]
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-9)
    mask = torch.ones(4, 4)
    mask[0, 0] = 0  # the spike is outside the mask: the range inside is 0 -> clamped, not the spike
    inside = M.psnr(a, b, mask=mask, peak="range", per_sample=True)
    assert bool((inside < out).all())
    with pytest.raises(ValueError, match="peak"):
        M.psnr(a, b, peak="max")


def _np_shift(v: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """Band-limited circular shift of odd-sized (..., H, W) arrays with numpy's FFT (no Nyquist bin to split)."""
    h, w = v.shape[-2:]
    ky, kx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
    return np.real(np.fft.ifft2(np.fft.fft2(v) * np.exp(-2j * np.pi * (ky * dy + kx * dx))))


def test_per_sample_spsnr_equals_an_independent_per_sample_psnr():
    """Cropped SPSNR written out with numpy: the input shifted by d with the source frame [0, N) kept, f applied,
    compared with the shifted f(x) on the pixels whose source lies in [0, N-1]; one PSNR (peak 2) per sample, and
    the pooled value from the mean of the per-sample MSEs (equal masks)."""
    x = torch.randn(3, 2, 15, 13, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    blur = lambda v: S.ideal_lowpass(v, 0.3)  # noqa: E731  (circular: not equivariant to cropped shifts)
    d = (0.75, -1.5)
    h, w = x.shape[-2:]
    src_y, src_x = np.arange(h)[:, None] - d[0], np.arange(w)[None, :] - d[1]
    inside = (src_y >= 0) & (src_y < h) & (src_x >= 0) & (src_x < w)
    valid = (src_y >= 0) & (src_y <= h - 1) & (src_x >= 0) & (src_x <= w - 1)
    out = blur(torch.tensor(_np_shift(x.numpy(), *d) * inside)).numpy()
    target = _np_shift(blur(x).numpy(), *d)
    mse = ((out - target) ** 2 * valid).sum((1, 2, 3)) / (valid.sum() * x.shape[1])
    by_hand = 20 * np.log10(2.0) - 10 * np.log10(mse)
    per = M.spsnr(blur, x, d, per_sample=True)
    np.testing.assert_allclose(per.numpy(), by_hand, atol=1e-6)
    assert np.ptp(by_hand) > 0.1  # the samples differ: a pooled value returned per sample would fail
    pooled = M.spsnr(blur, x, d)
    assert float(pooled) == pytest.approx(20 * np.log10(2.0) - 10 * np.log10(mse.mean()), abs=1e-6)


def test_joint_range_peak_is_the_reference_mask_psnr():
    """peak="joint-range": AF-LDM's mask_psnr, max - min over a * mask and b * mask and the whole batch, MSE the
    mean of the per-sample masked MSEs; written out with numpy."""
    g = torch.Generator().manual_seed(4)
    a = torch.randn(2, 3, 6, 6, generator=g, dtype=torch.float64) + 0.5
    b = a + 0.1 * torch.randn(2, 3, 6, 6, generator=g, dtype=torch.float64)
    b[1, 0, 2, 2] = 9.0  # the batch's maximum, in sample 1 only
    a[0, 1, 0, 0] = -20.0  # outside the mask: does not count (but the masked zeros do)
    a[1, 2, 3, 3] = -5.0  # inside: the output counts too (the target-only peak "range" misses it)
    mask = torch.ones(6, 6, dtype=torch.float64)
    mask[0, :] = 0
    an, bn, mn = a.numpy() * mask.numpy(), b.numpy() * mask.numpy(), np.broadcast_to(mask.numpy(), a.shape)
    i_max = max(an.max(), bn.max()) - min(an.min(), bn.min())
    mse = (((an - bn) ** 2).sum((1, 2, 3)) / mn.sum((1, 2, 3))).mean()
    expected = 10 * np.log10(i_max ** 2 / mse)
    assert float(M.psnr(a, b, mask, peak="joint-range")) == pytest.approx(expected, abs=1e-9)
    per = M.psnr(a, b, mask, peak="joint-range", per_sample=True)
    ranges = [max(an[i].max(), bn[i].max()) - min(an[i].min(), bn[i].min()) for i in range(2)]
    mses = ((an - bn) ** 2).sum((1, 2, 3)) / mn.sum((1, 2, 3))
    np.testing.assert_allclose(per.numpy(), 10 * np.log10(np.square(ranges) / mses), atol=1e-9)
    assert float(M.psnr(a, b, mask, peak="joint-range")) != pytest.approx(float(M.psnr(a, b, mask, peak="range")))
    with pytest.raises(ValueError, match="joint-range"):
        M.psnr(a, b, peak="joint")


def test_per_sample_spsnr_averages_to_the_pooled_value_for_equal_errors_and_mean_sem_is_the_standard_error():
    x = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    f = lambda v: v * 1.0  # noqa: E731  (exactly equivariant: infinite SPSNR is clamped, so use a small blur)
    blur = lambda v: S.ideal_lowpass(v, 0.5)  # noqa: E731
    per = M.spsnr(blur, x, (0.0, 0.5), per_sample=True)
    assert per.shape == (3,)
    pooled = M.spsnr(blur, x, (0.0, 0.5))
    assert float(per.min()) - 1e-9 <= float(pooled) <= float(per.max()) + 1e-9
    assert float(M.spsnr(f, x, (0.0, 2.0), mode="circular")) > 150  # integer circular shift: exact
    mean, sem = M.mean_sem([1.0, 2.0, 3.0, 6.0])
    assert mean == pytest.approx(3.0)
    assert sem == pytest.approx(np.std([1, 2, 3, 6], ddof=1) / 2)
    assert M.mean_sem([5.0]) == (5.0, 0.0)
