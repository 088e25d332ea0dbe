"""afcore.course: StyleGAN3 schedule and filters against independent references, polyphase = zero insertion + FIR,
aliasing / rotation / border helpers on constructed inputs."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
import scipy.special
import torch

from afcore import course, signal


def test_fold_matches_sampled_cosines():
    n = np.arange(64)
    for f in (0.1, 0.45, 0.7, 1.3, 2.0):
        fa = float(course.fold(f))
        assert 0 <= fa <= 0.5
        np.testing.assert_allclose(np.cos(2 * np.pi * f * n), np.cos(2 * np.pi * fa * n), atol=1e-9)
    assert float(course.fold(17.0, 10.0)) == pytest.approx(3.0)


def test_stylegan3_schedule_published_values():
    rows = course.stylegan3_schedule(256)  # StyleGAN3 config T at 256 px (Fig. 4b of Karras et al. 2021)
    assert len(rows) == 15
    assert rows[0]["cutoff"] == pytest.approx(2.0) and rows[0]["sampling_rate"] == 16
    assert rows[0]["stopband"] == pytest.approx(2**2.1)
    for r in rows[-3:]:
        assert r["critically_sampled"] and r["cutoff"] == pytest.approx(128) and r["sampling_rate"] == 256
        assert r["stopband"] == pytest.approx(128 * 2**0.3)
    assert [r["size"] for r in rows[-2:]] == [256, 256] and rows[0]["size"] == 36  # 16 + 2 * margin 10
    for r in rows[:-1]:
        # nonlinearity at twice the higher rate, 6 taps per factor
        assert r["up_taps"] == 6 * r["up_factor"] and r["down_factor"] == 2
    assert rows[-1]["up_taps"] == rows[-1]["down_taps"] == 1
    # cutoffs grow geometrically up to the critical layers
    ratios = [rows[i + 1]["cutoff"] / rows[i]["cutoff"] for i in range(11)]
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-12)


def test_stylegan3_schedule_rejects_bad_input():
    with pytest.raises(ValueError, match="num_critical"):
        course.stylegan3_schedule(256, num_layers=4, num_critical=4)
    with pytest.raises(ValueError, match="img_resolution"):
        course.stylegan3_schedule(1.5)


def test_stylegan3_filter_matches_firwin_and_the_jinc_formula():
    for numtaps, cutoff, width, fs in ((12, 10.0, 8.0, 64.0), (24, 2.0, 12.0, 32.0), (13, 0.5, 0.6, 2.0)):
        ours = course.stylegan3_filter(numtaps, cutoff, width, fs).numpy()
        np.testing.assert_allclose(ours, scipy.signal.firwin(numtaps, cutoff, width=width, fs=fs), atol=1e-12)
    # radial: J1(2 pi f_c r) / (pi r) on sample positions / fs, outer Kaiser window from the attenuation formula
    numtaps, cutoff, width, fs = 12, 10.0, 8.0, 64.0
    x = (np.arange(numtaps) - (numtaps - 1) / 2) / fs
    r = np.hypot(*np.meshgrid(x, x))
    ref = scipy.special.j1(2 * cutoff * np.pi * r) / (np.pi * r)
    w = np.kaiser(numtaps, scipy.signal.kaiser_beta(scipy.signal.kaiser_atten(numtaps, width / (fs / 2))))
    ref = ref * np.outer(w, w)
    ref /= ref.sum()
    np.testing.assert_allclose(course.stylegan3_filter(numtaps, cutoff, width, fs, radial=True).numpy(), ref,
                               atol=1e-12)


def test_dtft_agrees_with_fft_response():
    taps = signal.lowpass_filter(13, 0.5, beta=4.0, dtype=torch.float64)
    freqs, resp = signal.frequency_response(taps, 256)
    np.testing.assert_allclose(course.dtft(taps, freqs.numpy()), resp.numpy(), atol=1e-10)
    k = signal.lowpass_filter(7, 0.5, beta=4.0, radial=True, dtype=torch.float64)
    f2, r2 = signal.frequency_response(k, 64)
    fy, fx = np.meshgrid(f2.numpy(), f2.numpy(), indexing="ij")
    np.testing.assert_allclose(course.dtft(k, fy, fx), r2.numpy(), atol=1e-10)


def test_aliased_fraction_of_ideal_and_trivial_filters():
    assert course.aliased_fraction(torch.tensor([1.0]), 2) == pytest.approx(0.5, abs=1e-3)  # white noise: half folds
    long = signal.lowpass_filter(401, 0.4, beta=8.0, dtype=torch.float64)  # cutoff 0.2 < 0.25: nothing folds
    assert course.aliased_fraction(long, 2) < 1e-6
    with pytest.raises(ValueError, match="factor"):
        course.aliased_fraction(long, 0)


def test_anisotropy_separates_square_and_disk_responses():
    sinc = signal.lowpass_filter(25, 0.5, beta=8.0, dtype=torch.float64)
    separable = torch.outer(sinc, sinc)
    jinc = signal.lowpass_filter(25, 0.5, beta=8.0, radial=True, dtype=torch.float64)
    assert course.anisotropy_db(torch.tensor([[1.0]]), 0.3) == pytest.approx(0.0, abs=1e-9)
    # at radius 0.3 the square pass-band still passes the diagonal; the disk treats all directions alike
    assert course.anisotropy_db(separable, 0.3) > 10 > 3 > course.anisotropy_db(jinc, 0.3)


def test_polyphase_upsample_equals_zero_insertion_and_fir():
    x = torch.randn(2, 12, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for factor, numtaps in ((2, 13), (3, 19), (4, 7)):
        taps = signal.lowpass_filter(numtaps, 1 / factor, beta=8.0, dtype=torch.float64)
        ours = course.polyphase_upsample(course.polyphase_upsample(x, taps, factor, -1), taps, factor, -2)
        ref = signal.upsample(x, factor, method="kaiser", numtaps=numtaps, beta=8.0, impl="ref")
        torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="odd"):
        course.polyphase_upsample(x, torch.ones(4), 2)


def test_rotation_psnr_exact_for_identity_and_finite_for_a_separable_filter():
    g = torch.Generator().manual_seed(1)
    x = signal.ideal_lowpass(torch.randn(32, 32, dtype=torch.float64, generator=g), 0.6, radial=True)
    assert course.rotation_psnr(lambda t: t, x, 30.0) > 200
    box = torch.ones(5, 5, dtype=torch.float64) / 25
    assert course.rotation_psnr(lambda t: signal.fir_filter(t, box), x, 30.0) < 60


def test_error_by_border_distance_bins():
    err = torch.zeros(8, 8)
    err[0, :] = 1.0  # the top row only
    d, e = course.error_by_border_distance(err)
    assert list(d) == [0, 1, 2, 3]
    assert e[0] == pytest.approx(8 / 28) and np.all(e[1:] == 0)
    assert course.db_from_mse(1.0) == pytest.approx(20 * np.log10(2))


def test_rotation_and_border_helpers_build_their_masks_on_the_input_device():
    """On a GPU run (notebook 04) the inscribed-circle mask and the border bins must live where the images are: the
    'meta' device stands in for CUDA (a mask built on the CPU would be a 'cpu' tensor here)."""
    x = torch.zeros(1, 1, 16, 16, dtype=torch.float64, device="meta")
    a, b, mask = course.rotation_pair(lambda t: t, x, 30.0)
    assert a.device.type == b.device.type == mask.device.type == "meta" and mask.dtype == x.dtype
    assert mask.shape == (16, 16)
    sums, counts = course.border_distance_sums(torch.zeros(3, 16, 16, device="meta"),
                                               torch.ones(16, 16, device="meta"))
    assert sums.device.type == counts.device.type == "meta" and sums.shape == (8,)
    assert signal.zone_plate(8, device="meta").device.type == "meta"  # notebook 00's test pattern
    # on the CPU the pair gives rotation_psnr's value
    xc = signal.ideal_lowpass(torch.randn(16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0),
                                          device="cpu"), 0.9, radial=True)
    a, b, mask = course.rotation_pair(lambda t: signal.ideal_lowpass(t, 0.5), xc, 30.0)
    from afcore import metrics

    assert float(metrics.psnr(a * mask, b * mask, mask)) == course.rotation_psnr(lambda t: signal.ideal_lowpass(t, 0.5),
                                                                                 xc, 30.0)


def test_a_flat_image_never_recovers_a_reference():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(32, 32, generator=g, dtype=torch.float64)
    flat = torch.full_like(ref, 0.3)
    m = course.match_reference(flat, ref)
    # the error fraction alone scores a flat image 1: the criterion must also demand correlation
    assert m["error_fraction"] == pytest.approx(1.0) and m["correlation"] == 0.0
    assert not course.recovers(flat, ref) and not course.recovers(flat, ref, max_error_fraction=1.0)
    assert not course.recovers(0.01 * ref, ref)  # perfectly correlated but nearly flat: the error test fails
    assert course.recovers(ref + 0.1 * torch.randn(32, 32, generator=g, dtype=torch.float64), ref)
    with pytest.raises(ValueError, match="constant"):
        course.match_reference(ref, flat)


def test_phase_taps_and_alias_free_layer_macs():
    for n, f in ((13, 2), (25, 4), (12, 2), (7, 3)):
        per = course.phase_taps(n, f)
        assert len(per) == f and sum(per) == n and max(per) - min(per) <= 1
    # notebook 05's count: a x2 filtered activation with separable n-tap filters costs 3n + 3n per pixel
    m = course.alias_free_layer_macs(2, 13)
    assert (m["up_macs"], m["down_macs"], m["activations"]) == (39, 39, 4)
    for f, n in ((2, 13), (4, 25)):
        sep, rad = course.alias_free_layer_macs(f, n), course.alias_free_layer_macs(f, n, radial=True)
        assert sep["total_macs"] == 2 * n * (f + 1) and rad["total_macs"] == 2 * n * n
        assert sep["activations"] == rad["activations"] == f * f


def test_pixel_grid_panels_are_whole_pixels():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = course.pixel_grid(2, 3, 64, dpi=100)
    fig.canvas.draw()
    for ax in axes.flat:
        b = ax.get_window_extent()
        assert b.width == pytest.approx(64) and b.height == pytest.approx(64)
        assert b.x0 == pytest.approx(round(b.x0)) and b.y0 == pytest.approx(round(b.y0))
    cb = course.colorbar_beside(fig, axes[0, 0], axes[0, 0].imshow(np.zeros((4, 4))))
    assert cb.ax.get_window_extent().height == pytest.approx(64)
    plt.close(fig)
