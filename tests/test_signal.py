"""afcore.signal against exact identities, scipy, and its own reference paths."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import scipy.signal
import scipy.special
import torch

from afcore import signal as S


@pytest.fixture
def noise():
    return torch.randn(2, 3, 16, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def test_integer_fourier_shift_equals_roll(noise):
    for d in [(3, -5), (-7, 11), (16, 0)]:
        torch.testing.assert_close(S.fourier_shift(noise, d), torch.roll(noise, d, (-2, -1)), rtol=0, atol=1e-12)


def test_fractional_shifts_compose_on_band_limited_signals(noise):
    x = S.ideal_lowpass(noise, 0.9)
    two_steps = S.fourier_shift(S.fourier_shift(x, (0.3, -0.2)), (0.45, 1.1))
    torch.testing.assert_close(two_steps, S.fourier_shift(x, (0.75, 0.9)), rtol=0, atol=1e-12)


def test_fourier_shift_reference_path_agrees(noise):
    d = (0.3, -1.7)
    torch.testing.assert_close(S.fourier_shift(noise, d), S.fourier_shift(noise, d, impl="ref"), rtol=0, atol=1e-5)


def test_fourier_shift_matches_scipy_on_a_smooth_blob():
    yy, xx = np.mgrid[0:40, 0:36]
    blob = np.exp(-(((yy - 20) / 4.0) ** 2 + ((xx - 17) / 3.0) ** 2))
    ours = S.fourier_shift(torch.tensor(blob), (1.25, -2.5)).numpy()
    ref = scipy.ndimage.shift(blob, (1.25, -2.5), order=5, mode="grid-wrap")
    assert np.abs(ours - ref).max() < 2e-3


def test_crop_shift_zero_fills_and_masks_the_border():
    x = torch.ones(1, 6, 8)
    out, mask = S.shift(x, (2, -3), mode="crop")
    expected = torch.zeros(6, 8)
    expected[2:, :5] = 1
    torch.testing.assert_close(mask, expected)
    torch.testing.assert_close(out[0], expected, atol=1e-6, rtol=0)
    _, frac_mask = S.shift(x, (0.5, 0.0), mode="crop")
    assert frac_mask[0].sum() == 0 and frac_mask[1:].all()
    circ, ones = S.shift(x, (0.5, 0.5), mode="circular")
    assert ones.all() and torch.allclose(circ, x, atol=1e-6)


def _reference_ideal_crop(x: np.ndarray, dy: float, dx: float, r: int) -> tuple[np.ndarray, np.ndarray]:
    """AF-LDM's ``ideal_crop`` rebuilt from its description with numpy (odd sizes: no Nyquist bin): ideal x r
    up-sampling by zero-padding the centred spectrum, an integer roll by (r dy, r dx), zeroing the up-sampled rows /
    columns the roll brought in (the first r d for d >= 0, the last r |d| for d < 0), subsampling every r-th pixel;
    the mask zeroes the first ceil(d) rows for d >= 0, the last ceil(|d|) for d < 0."""
    h, w = x.shape
    spec = np.fft.fftshift(np.fft.fft2(x))
    big = np.zeros((r * h, r * w), complex)
    oy, ox = (r * h) // 2 - h // 2, (r * w) // 2 - w // 2  # DC at the centre fftshift uses
    big[oy:oy + h, ox:ox + w] = spec
    up = np.real(np.fft.ifft2(np.fft.ifftshift(big))) * r * r
    si, sj = int(round(dy * r)), int(round(dx * r))
    rolled = np.roll(up, (si, sj), (0, 1))

    def keep(n, s):
        k = np.ones(n)
        if s >= 0:
            k[:s] = 0
        else:
            k[n + s:] = 0
        return k
    rolled = rolled * keep(r * h, si)[:, None] * keep(r * w, sj)[None, :]
    out = rolled[::r, ::r]

    def low(n, d):
        k = np.ones(n)
        c = int(np.ceil(abs(d)))
        if d >= 0:
            k[:c] = 0
        elif c:
            k[n - c:] = 0
        return k
    return out, low(h, dy)[:, None] * low(w, dx)[None, :]


@pytest.mark.parametrize("d", [(-0.5, 0.25), (0.375, -1.625), (-2.0, 1.0), (-0.125, -0.875)])
def test_crop_shift_matches_the_reference_ideal_crop_across_the_wrap_seam(d):
    g = np.random.default_rng(3)
    x = g.standard_normal((9, 11))
    ref, ref_mask = _reference_ideal_crop(x, *d, r=8)
    out, mask = S.shift(torch.tensor(x), d, mode="crop")
    np.testing.assert_array_equal(mask.numpy(), ref_mask)
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-9)
    if d[0] < 0 and d[0] % 1:  # the last row's source lies in (H-1, H): interpolated across the seam, not zeroed
        assert np.abs(out.numpy()[-1, :]).max() > 0.1 and mask[-1].sum() == 0
    # the earlier behaviour, kept as seam="zero": everything outside the mask is zero
    old, _ = S.shift(torch.tensor(x), d, mode="crop", seam="zero")
    np.testing.assert_allclose(old.numpy(), ref * ref_mask, atol=1e-9)


def test_crop_shift_names_a_bad_seam():
    with pytest.raises(ValueError, match="seam must be one of"):
        S.shift(torch.ones(4, 4), (0.5, 0), mode="crop", seam="wrap")


def test_lanczos_shift_is_exact_for_integers_and_close_for_smooth(noise):
    torch.testing.assert_close(S.lanczos_shift(noise, (2, -1)), torch.roll(noise, (2, -1), (-2, -1)))
    smooth = S.ideal_lowpass(noise, 0.3)
    err = (S.lanczos_shift(smooth, (0.5, 0.25)) - S.fourier_shift(smooth, (0.5, 0.25))).abs().max()
    assert err < 0.02 * smooth.abs().max()


@pytest.mark.parametrize("numtaps,cutoff,beta,fs", [(13, 0.5, 2.0, 2.0), (7, 0.25, 0.0, 1.0), (25, 0.3, 8.0, 2.0)])
def test_kaiser_sinc_matches_firwin(numtaps, cutoff, beta, fs):
    ours = S.lowpass_filter(numtaps, cutoff, fs=fs, beta=beta, dtype=torch.float64).numpy()
    ref = scipy.signal.firwin(numtaps, cutoff, window=("kaiser", beta), fs=fs)
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_jinc_kernel_is_the_anjum_kernel():
    h = S.lowpass_filter(3, 0.5, fs=2.0, beta=0.0, radial=True, normalize=False, dtype=torch.float64)
    wc = np.pi / 2
    assert h[1, 1] == pytest.approx(wc**2 / (4 * np.pi))
    assert h[1, 2] == pytest.approx(wc * scipy.special.j1(wc) / (2 * np.pi))
    assert h[0, 0] == pytest.approx(wc * scipy.special.j1(wc * np.sqrt(2)) / (2 * np.pi * np.sqrt(2)))
    torch.testing.assert_close(h, h.T)
    torch.testing.assert_close(h, h.flip(0))
    n = S.lowpass_filter(9, 0.5, radial=True, beta=2.0)
    assert n.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_ideal_upsample_equals_scipy_resample(noise):
    x = noise[0, 0]
    ref = scipy.signal.resample(scipy.signal.resample(x.numpy(), 32, axis=0), 40, axis=1)
    np.testing.assert_allclose(S.upsample(x, 2).numpy(), ref, atol=1e-12)


def test_ideal_downsample_of_band_limited_signal_equals_scipy_and_is_equivariant(noise):
    x = S.ideal_lowpass(noise, 0.45)
    ref = scipy.signal.resample(scipy.signal.resample(x[0, 0].numpy(), 8, axis=0), 10, axis=1)
    np.testing.assert_allclose(S.downsample(x, 2)[0, 0].numpy(), ref, atol=1e-12)
    for d in [(2.0, -4.0), (0.7, -1.3), (0.125, 0.375)]:
        lhs = S.downsample(S.fourier_shift(x, d), 2)
        rhs = S.fourier_shift(S.downsample(x, 2), (d[0] / 2, d[1] / 2))
        torch.testing.assert_close(lhs, rhs, rtol=0, atol=1e-12)


def test_up_then_down_is_identity_for_ideal_on_signals_without_nyquist_energy(noise):
    x = S.ideal_lowpass(noise, 0.9)
    torch.testing.assert_close(S.downsample(S.upsample(x, 2), 2), x, rtol=0, atol=1e-12)


@pytest.mark.parametrize("radial,padding", [(False, "circular"), (True, "zeros"), (False, "zeros")])
def test_kaiser_resampling_reference_paths(noise, radial, padding):
    kw = dict(method="kaiser", radial=radial, padding=padding, numtaps=5, beta=2.0)
    torch.testing.assert_close(S.upsample(noise, 2, **kw), S.upsample(noise, 2, impl="ref", **kw))
    torch.testing.assert_close(S.downsample(noise, 2, **kw), S.downsample(noise, 2, impl="ref", **kw))


def test_kaiser_upsample_keeps_amplitude():
    x = torch.full((1, 8, 8), 0.7, dtype=torch.float64)
    for radial in (False, True):
        up = S.upsample(x, 2, method="kaiser", radial=radial, numtaps=13, beta=8.0)
        assert up.mean().item() == pytest.approx(0.7)
        assert (up - 0.7).abs().max() < 0.01


def test_ideal_lowpass_reference_and_spectrum(noise):
    torch.testing.assert_close(S.ideal_lowpass(noise, 0.5), S.ideal_lowpass(noise, 0.5, impl="ref"))
    low = S.ideal_lowpass(noise, 0.5, radial=True)
    spec = torch.fft.fft2(low).abs()
    fy = torch.fft.fftfreq(16)[:, None]
    fx = torch.fft.fftfreq(20)[None, :]
    assert spec[..., torch.sqrt(fy**2 + fx**2) > 0.25 + 1e-6].max() < 1e-10
    freqs, power = S.radial_power_spectrum(low)
    assert power[freqs > 0.27].max() < 1e-20 and power[freqs < 0.2].min() > 0


def test_rotation_identities_and_agreement_with_scipy():
    yy, xx = np.mgrid[0:48, 0:48]
    blob = np.exp(-(((yy - 18) / 5.0) ** 2 + ((xx - 28) / 3.0) ** 2))
    t = torch.tensor(blob)
    assert torch.equal(S.rotate(t, 0.0), t)
    r = t
    for _ in range(4):
        r = S.rotate(r, 90)
    assert torch.equal(r, t)
    for angle in (30.0, -20.0, 100.0):
        ref = scipy.ndimage.rotate(blob, angle, reshape=False, order=3)
        assert np.abs(S.rotate(t, angle).numpy() - ref).max() < 2e-3
        assert np.abs(S.rotate(t, angle, method="bilinear").numpy() - ref).max() < 0.05
    back = S.rotate(S.rotate(t, 33.0), -33.0)
    assert (back - t).abs().max() < 1e-6


def test_non_square_batched_inputs_keep_their_shape():
    x = torch.randn(2, 3, 12, 20)
    assert S.upsample(x, 2).shape == (2, 3, 24, 40)
    assert S.downsample(x, 2, method="kaiser").shape == (2, 3, 6, 10)
    assert S.rotate(x, 15).shape == x.shape
    assert S.shift(x, (0.5, 1.5), mode="crop")[0].shape == x.shape


def test_bad_arguments_raise_clear_errors():
    x = torch.randn(8, 8)
    with pytest.raises(ValueError, match="method must be one of"):
        S.upsample(x, 2, method="bicubic")
    with pytest.raises(ValueError, match="mode must be one of"):
        S.shift(x, (1, 1), mode="reflect")
    with pytest.raises(ValueError, match="shift must be a pair"):
        S.fourier_shift(x, 1.0)
    with pytest.raises(ValueError, match="cutoff must be in"):
        S.lowpass_filter(5, 1.5)
    with pytest.raises(ValueError, match="numtaps must be odd"):
        S.fir_filter(x, torch.ones(4) / 4)
    with pytest.raises(ValueError, match="divisible by factor"):
        S.downsample(torch.randn(7, 8), 2)
    with pytest.raises(ValueError, match=r"shape \(\.\.\., H, W\)"):
        S.fourier_shift(torch.randn(5), (1, 1))


# ------------------------------------------------------------ filters against independent definitions
def circular_lowpass_kernel(omega_c, n, beta=None):
    """Anjum et al.'s radial low-pass, written out independently: w_c J1(w_c r) / (2 pi r), centre w_c^2 / (4 pi),
    times the outer product of two 1-D Kaiser windows of n points."""
    kernel = np.empty((n, n))
    c = (n - 1) / 2
    for i in range(n):
        for j in range(n):
            r = np.hypot(i - c, j - c)
            kernel[i, j] = omega_c**2 / (4 * np.pi) if r == 0 else omega_c * scipy.special.j1(omega_c * r) / (2 * np.pi * r)
    if beta is not None:
        window = scipy.signal.windows.kaiser(n, beta, sym=True)
        kernel = kernel * window[:, None] * window[None, :]
    return kernel


@pytest.mark.parametrize("n", [3, 5, 9])
@pytest.mark.parametrize("beta", [0.0, 1.0, 2.0, 8.0])
@pytest.mark.parametrize("cutoff", [0.5, 0.25])
def test_radial_kaiser_jinc_equals_the_reference_circular_lowpass_kernel(n, beta, cutoff):
    omega_c = np.pi * cutoff  # cutoff (fraction of Nyquist, fs=2) -> radians per sample
    ref = circular_lowpass_kernel(omega_c, n, beta)
    ours = S.lowpass_filter(n, cutoff, fs=2.0, beta=beta, radial=True, normalize=False, dtype=torch.float64)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-12, atol=1e-15)
    normalised = S.lowpass_filter(n, cutoff, fs=2.0, beta=beta, radial=True, dtype=torch.float64)
    np.testing.assert_allclose(normalised.numpy(), ref / ref.sum(), rtol=1e-12, atol=1e-15)


def kaiser_beta_by_formula(numtaps, width_over_nyquist):
    """Kaiser's empirical design formulas (attenuation from taps and width, then beta from attenuation)."""
    atten = 2.285 * (numtaps - 1) * np.pi * width_over_nyquist + 7.95
    if atten > 50:
        return 0.1102 * (atten - 8.7)
    if atten >= 21:
        return 0.5842 * (atten - 21) ** 0.4 + 0.07886 * (atten - 21)
    return 0.0


@pytest.mark.parametrize("numtaps,width,fs", [(13, 0.25, 2.0), (25, 0.3, 2.0), (7, 0.1, 2.0), (13, 40.0, 256.0),
                                              (4, 0.05, 2.0)])
def test_kaiser_beta_matches_scipy_and_kaisers_formulas(numtaps, width, fs):
    ours = S.kaiser_beta(numtaps, width, fs=fs)
    ref = scipy.signal.kaiser_beta(scipy.signal.kaiser_atten(numtaps, width / (0.5 * fs)))
    assert ours == pytest.approx(ref, rel=1e-12, abs=1e-12)
    assert ours == pytest.approx(kaiser_beta_by_formula(numtaps, width / (0.5 * fs)), rel=1e-12, abs=1e-12)


# ------------------------------------------------------------ the ideal down-sampler's Nyquist bin
def test_ideal_downsample_zeroes_the_new_nyquist_by_default_and_half_is_the_adjoint_of_upsample(noise):
    n = torch.arange(16, dtype=torch.float64)
    checker = torch.cos(torch.pi * n / 2)[None, :].expand(8, 16)  # 1/4 cycle/sample along W: the new Nyquist
    for impl in ("fast", "ref"):
        assert S.downsample(checker, 2, impl=impl).abs().max() < 1e-12  # default: removed (AF-LDM reference)
        half = S.downsample(checker, 2, impl=impl, nyquist="half")
        torch.testing.assert_close(half, 0.5 * torch.cos(torch.pi * torch.arange(8.0, dtype=torch.float64))
                                   .expand(4, 8), rtol=0, atol=1e-12)
    # default output of any input has no energy at its own Nyquist (even sizes): strictly band-limited
    spec = torch.fft.fft2(S.downsample(noise, 2))
    assert spec[..., 4, :].abs().max() < 1e-10 and spec[..., :, 5].abs().max() < 1e-10
    # half weight: <down(x), y> = <x, up(y)> / 4, the adjoint pair (each is the other's gradient)
    y = torch.randn(2, 3, 8, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    lhs = (S.downsample(noise, 2, nyquist="half") * y).sum()
    rhs = (noise * S.upsample(y, 2)).sum() / 4
    assert lhs.item() == pytest.approx(rhs.item(), rel=1e-12)
    assert (S.downsample(noise, 2) * y).sum().item() != pytest.approx(rhs.item(), rel=1e-6)
    with pytest.raises(ValueError, match="nyquist must be one of"):
        S.downsample(noise, 2, nyquist="full")


# ------------------------------------------------------------ the 3x3 up-sampler of Anjum et al.
@pytest.mark.parametrize("impl", ["fast", "ref"])
def test_3x3_jinc_upsampler_turns_a_constant_into_the_papers_checkerboard(impl):
    """Not a defect: the windowed jinc's polyphase components have unequal DC gains (a 3x3 kernel could have equal
    ones, the bilinear tent does), so a constant becomes 4c (h11, 2 h10, 4 h00) on the four output phases."""
    c = 0.7
    const = torch.full((1, 6, 8), c, dtype=torch.float64)
    kw = dict(method="kaiser", numtaps=3, beta=1.0, radial=True, normalize=True, padding="circular", impl=impl)
    up = S.upsample(const, 2, **kw)[0]
    h = S.lowpass_filter(3, 0.5, beta=1.0, radial=True, dtype=torch.float64)
    torch.testing.assert_close(up[::2, ::2], torch.full((6, 8), 4 * c * h[1, 1].item(), dtype=torch.float64))
    torch.testing.assert_close(up[::2, 1::2], torch.full((6, 8), 8 * c * h[1, 0].item(), dtype=torch.float64))
    torch.testing.assert_close(up[1::2, ::2], torch.full((6, 8), 8 * c * h[0, 1].item(), dtype=torch.float64))
    torch.testing.assert_close(up[1::2, 1::2], torch.full((6, 8), 16 * c * h[0, 0].item(), dtype=torch.float64))
    assert 0.88 < up.min().item() / c < 0.89 and 1.09 < up.max().item() / c < 1.10
    assert up.mean().item() == pytest.approx(c)  # the mean is kept: the kernel sums to 1, the gain is 4
    # the same construction with the tent [1, 2, 1] / 4 gives every phase gain 1: the ripple is the jinc's
    tent = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], dtype=torch.float64) / 16
    z = torch.zeros(12, 16, dtype=torch.float64)
    z[::2, ::2] = c
    torch.testing.assert_close(4 * S.fir_filter(z, tent), torch.full((12, 16), c, dtype=torch.float64))
