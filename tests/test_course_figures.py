"""afcore.course_figures: the sawtooth's apparent frequency against the peak of a sampled cosine's spectrum, the
replica sums against the DFT of real decimated / expanded signals, the staged filtered activation against the fast
layer, frame averaging on equivariant and grid-sticking operations."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from afcore import course_figures as cf, layers, signal  # noqa: E402


def _dft_peak(f, fs, n=4000):
    """The frequency of the largest DFT bin of n samples of cos(2 pi f t) taken at rate fs (an independent
    measurement of the apparent frequency: no folding formula involved)."""
    t = np.arange(n) / fs
    spec = np.abs(np.fft.rfft(np.cos(2 * np.pi * f * t)))
    return np.fft.rfftfreq(n, 1 / fs)[np.argmax(spec)]


@pytest.mark.parametrize("fs", [1.0, 10.0])
def test_sawtooth_apparent_frequency_is_the_dft_peak(fs):
    fig, ax = plt.subplots()
    f, fa = cf.plot_sawtooth(ax, fs=fs, f_max=2.3 * fs, n=47)
    plt.close(fig)
    for fi, fai in zip(f[1:], fa[1:]):  # skip f = 0 (DC)
        if abs(fai) < 1e-9 or abs(fai - fs / 2) < 1e-9:
            continue  # DC and Nyquist alias to themselves, the DFT peak is ambiguous in sign only
        assert fai == pytest.approx(_dft_peak(fi, fs), abs=fs / 4000 + 1e-12)
    # the curve is a triangle wave: slope +1 below fs/2, -1 between fs/2 and fs, period fs
    assert np.all((fa >= 0) & (fa <= fs / 2 + 1e-12))
    assert float(cf.apparent_frequency(0.3 * fs, fs)) == pytest.approx(0.3 * fs)
    assert float(cf.apparent_frequency(0.7 * fs, fs)) == pytest.approx(0.3 * fs)
    assert float(cf.apparent_frequency(1.3 * fs, fs)) == pytest.approx(0.3 * fs)


def _triangle_signal(n, band):
    """A real, zero-phase signal of n samples whose DFT is exactly the triangle of half-width band."""
    f = np.fft.fftfreq(n)
    return np.real(np.fft.ifft(cf.triangle(f, band)))


@pytest.mark.parametrize("factor,band", [(2, 0.2), (2, 0.35), (3, 0.3)])
def test_replica_sum_is_the_spectrum_of_a_decimated_signal(factor, band):
    n = 480
    x = _triangle_signal(n, band)
    y = x[::factor]
    spec = np.abs(np.fft.fft(y))
    f_new = np.fft.fftfreq(y.size)  # cycles per new sample
    # decimation stretches the spectrum by `factor`, scales it by 1/factor and repeats it at every integer
    predicted = cf.replica_sum(f_new, band * factor, cf.replica_centres(1.0, -0.5, 0.5, band * factor), 1 / factor)
    np.testing.assert_allclose(spec, predicted, atol=1e-12)


@pytest.mark.parametrize("factor", [2, 3])
def test_replica_sum_is_the_spectrum_of_an_expanded_signal(factor):
    n, band = 240, 0.4
    z = np.zeros(n * factor)
    z[::factor] = _triangle_signal(n, band)
    f_new = np.fft.fftfreq(z.size)
    predicted = cf.replica_sum(f_new, band / factor, cf.replica_centres(1.0 / factor, -0.5, 0.5, band / factor))
    np.testing.assert_allclose(np.abs(np.fft.fft(z)), predicted, atol=1e-12)


def test_draw_replicas_overlap_only_above_nyquist_band():
    fig, axes = plt.subplots(1, 2)
    assert cf.draw_replicas(axes[0], band=0.35, period=1.0, nyquist=0.5) == 0.0
    # band 0.7 > 0.5: the copy at 1 reaches down to 0.3; overlap area over [0.3, 0.5] relative to the baseband's
    frac = cf.draw_replicas(axes[1], band=0.7, period=1.0, nyquist=0.5)
    plt.close(fig)
    f = np.linspace(0, 0.5, 100001)
    exact = np.trapezoid(cf.triangle(f - 1, 0.7), f) / np.trapezoid(cf.triangle(f, 0.7), f)
    assert frac == pytest.approx(exact, rel=1e-2)  # the drawing grid has 4001 points


def test_staged_filtered_activation_equals_the_fast_layer():
    torch.manual_seed(0)
    x = signal.ideal_lowpass(torch.randn(2, 3, 24, 20, dtype=torch.float64), 0.8)
    taps = signal.kaiser_taps(2, 13, 8.0, False, True).to(torch.float64)
    for act in (nn.GELU(), nn.ReLU()):
        stages = cf.filtered_activation_stages(x, act, 2, taps, dims=(-2, -1))
        fast = layers.FilteredActivation(act, up=2, method="kaiser", numtaps=13, beta=8.0, impl="fast")(x)
        torch.testing.assert_close(stages["output"], fast, atol=1e-12, rtol=0)
        assert stages["upsampled"].shape[-2:] == (48, 40) and stages["output"].shape == x.shape
        # the up-sampler keeps the input samples up to the filter's phase-gain ripple (13 taps, beta 8)
        assert float((stages["upsampled"][..., ::2, ::2] - x).abs().max()) < 1e-2
    # the identity activation on an input inside the pass-band (below 0.3 of Nyquist): up then down returns it
    x_low = signal.ideal_lowpass(x, 0.3 / 0.8)
    ident = cf.filtered_activation_stages(x_low, nn.Identity(), 2, taps, dims=(-2, -1))
    rel = float((ident["output"] - x_low).pow(2).mean() / x_low.pow(2).mean()) ** 0.5
    assert rel < 0.02  # the pass-band ripple of 13 taps


def test_frame_average_equivariant_vs_sticking():
    torch.manual_seed(1)
    x = signal.ideal_lowpass(torch.randn(1, 1, 32, 32, dtype=torch.float64), 0.5)
    shifts = np.arange(8) * 0.5
    lowpass = lambda t: signal.ideal_lowpass(t, 0.7)  # noqa: E731  shift-equivariant
    avg, moving = cf.frame_average(lowpass, x, shifts)
    assert float((avg - moving).abs().max()) < 1e-10
    # a nearest-neighbour sub-sample and re-expand sticks to a 2-pixel grid: the screen average differs
    stick = lambda t: t[..., ::2, ::2].repeat_interleave(2, -1).repeat_interleave(2, -2)  # noqa: E731
    avg_s, moving_s = cf.frame_average(stick, x, shifts)
    assert float((avg_s - moving_s).pow(2).mean()) > 1e-3 * float(moving_s.pow(2).mean())
    # along the other axis: a shift along H of an H-constant image changes nothing
    col = x.mean(-2, keepdim=True).expand_as(x).contiguous()
    a, m = cf.frame_average(lambda t: t, col, shifts, dim=-2)
    torch.testing.assert_close(a, col) and torch.testing.assert_close(m, col)
