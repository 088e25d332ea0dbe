"""Latent I2SB (afcore.i2sb): bridge identities, exact recovery by an oracle, the degradations, the equivariance loss
and the positive control of both shift protocols."""
import pytest
import torch
from types import SimpleNamespace

from afcore import i2sb
from afcore.signal import fourier_shift


@pytest.mark.parametrize("betas", i2sb.BETAS)
def test_schedule_identities(betas):
    s = i2sb.bridge_schedule(betas)
    b = s["betas"].double()
    torch.testing.assert_close(s["mu_x0"] + s["mu_x1"], torch.ones(1000), atol=1e-6, rtol=0)
    assert abs(float(s["std_fwd"][0]) ** 2 - float(b[0])) < 1e-9
    assert abs(float(s["std_bwd"][-1]) ** 2 - float(b[-1])) < 1e-9
    torch.testing.assert_close(s["std_fwd"].double() ** 2, b.cumsum(0), rtol=1e-5, atol=0)
    # the Gaussian product: sigma_sb^2 = mu_x0 * sigma_f^2 (= mu_x1 * sigma_b^2)
    torch.testing.assert_close(s["std_sb"] ** 2, s["mu_x0"] * s["std_fwd"] ** 2, rtol=1e-4, atol=1e-10)
    assert float(s["mu_x1"][-1]) > 0.99 and float(s["mu_x0"][0]) > 0.99


def test_symmetric_betas_are_symmetric_and_ldm_are_not():
    b = i2sb.bridge_schedule("symmetric")["betas"]
    torch.testing.assert_close(b, b.flip(0), atol=0, rtol=0)
    peak = (1e-2 + 499 / 999 * ((0.3 / 1000) ** 0.5 - 1e-2)) ** 2  # the sqrt-linear ramp's value at its midpoint
    assert abs(float(b.max()) - peak) < 1e-9 and abs(float(b[0]) - 1e-4) < 1e-9 and float(b.argmax()) in (499, 500)
    ldm_b = i2sb.bridge_schedule("ldm")["betas"]
    assert abs(float(ldm_b[0]) - 0.0015) < 1e-7 and abs(float(ldm_b[-1]) - 0.0195) < 1e-7


def test_label_inverts_q_sample_and_pred_x0_inverts_label():
    s = i2sb.bridge_schedule()
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(6, 4, 8, 8, generator=g), torch.randn(6, 4, 8, 8, generator=g)
    n = torch.tensor([0, 1, 10, 500, 998, 999])
    x_n = i2sb.q_sample(s, n, x0, x1, g)
    torch.testing.assert_close(i2sb.pred_x0(s, n, x_n, i2sb.label(s, n, x0, x_n)), x0, atol=1e-5, rtol=0)
    ode = i2sb.q_sample(s, n, x0, x1, ot_ode=True)
    torch.testing.assert_close(ode, s["mu_x0"][n].view(-1, 1, 1, 1) * x0 + s["mu_x1"][n].view(-1, 1, 1, 1) * x1)


class Oracle(torch.nn.Module):
    def __init__(self, s, x0):
        super().__init__()
        self.s, self.x0 = s, x0

    def forward(self, x, t):
        return SimpleNamespace(sample=i2sb.label(self.s, t, self.x0, x))


@pytest.mark.parametrize("nfe", [1, 5, 20])
@pytest.mark.parametrize("ot_ode", [True, False])
def test_oracle_recovers_x0(nfe, ot_ode):
    s = i2sb.bridge_schedule()
    g = torch.Generator().manual_seed(1)
    x0, x1 = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    x, last_x0 = i2sb.sample(Oracle(s, x0), x1, s, nfe, ot_ode=ot_ode, generator=g)
    torch.testing.assert_close(last_x0, x0, atol=1e-5, rtol=0)
    if ot_ode:  # the ODE chain stays on the segment x0 + c (x1 - x0), c = s_f(0)^2 / s_f(N-1)^2 at the end
        c = float(s["std_fwd"][0] ** 2 / s["std_fwd"][-1] ** 2)
        torch.testing.assert_close(x, x0 + c * (x1 - x0), atol=1e-5, rtol=0)
    else:
        assert float((x - x0).abs().max()) < 1e-2 * nfe  # the last step's noise is at most s_f of the last kept step


def test_degradation_shapes_and_ideal_equivariance():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    for m in i2sb.DEGRADATIONS:
        y = i2sb.degrade_sr4(x, m)
        assert y.shape == x.shape
    y = i2sb.degrade_sr4(x, "bicubic_nearest")
    torch.testing.assert_close(y[..., ::4, ::4], y[..., 3::4, 3::4], atol=0, rtol=0)  # nearest: constant 4x4 blocks
    ideal = i2sb.degrade_sr4(x, "ideal")
    for d in [(4, 0), (0, 8), (4, -4)]:
        torch.testing.assert_close(i2sb.degrade_sr4(torch.roll(x, d, (-2, -1)), "ideal"),
                                   torch.roll(ideal, d, (-2, -1)), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="sr_degradation"):
        i2sb.degrade_sr4(x, "bilinear")
    with pytest.raises(ValueError, match="sr_betas"):
        i2sb.bridge_schedule("cosine")


def test_eq_loss_zero_for_pointwise_net():
    s = i2sb.bridge_schedule()
    g = torch.Generator().manual_seed(3)
    x0, x1 = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    loss, logs = i2sb.i2sb_loss(i2sb.PointwiseLinear(4), x0, x1, s, g, eq_weight=1.0, cfa=False)
    assert logs["equivariance"] < 1e-10 and logs["bridge"] > 0


@pytest.mark.parametrize("ot_ode", [False, True])
def test_positive_control_scores_at_the_ceiling(ot_ode):
    """The pointwise linear net with an identity decoder is exactly equivariant: both protocols at the ceiling
    (float rounding), also in the stochastic mode because the noises are shifted with the input."""
    s = i2sb.bridge_schedule()
    g = torch.Generator().manual_seed(4)
    net = i2sb.PointwiseLinear(3)
    x1 = torch.randn(2, 3, 16, 16, generator=g)
    r = i2sb.sr_shift_consistency(net, x1, s, [(0, k / 8) for k in (1, 4, 8, 12)], nfe=5, ot_ode=ot_ode, cfa=False,
                                  decode=lambda z: z, factor=1, generator=g)
    assert float(r["latent"].min()) > 80 and float(r["image"].min()) > 80
    hr = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    r = i2sb.image_shift_consistency(net, hr, s, [(0, 1), (0, 3), (2, 0)], lambda x: x, lambda z: z, "ideal",
                                     nfe=5, ot_ode=ot_ode, cfa=False, factor=1, generator=g)
    assert float(r["spsnr"].min()) > 80
    assert float(r["psnr_hr"].std(0).max()) < 1e-3  # no flicker
    if not ot_ode:  # fresh noise in the shifted run breaks it: the protocol, not the model, would be measured
        r2 = i2sb.sr_shift_consistency(net, x1, s, [(0, 0.5)], nfe=5, cfa=False, decode=None, generator=g)
        noises = i2sb.draw_noises(x1.shape, 5, g, "cpu")
        ref, _ = i2sb.sample(net, x1, s, 5, noises=noises)
        out, _ = i2sb.sample(net, fourier_shift(x1, (0, 0.5)), s, 5, generator=g)
        assert float(((out - fourier_shift(ref, (0, 0.5))) ** 2).mean()) > 1e-6
        assert float(r2["latent"].min()) > 80


def _reference_grid(num_steps, count):
    """I2SB's step-grid rule written out independently: the running float position is the partial sum of
    ``count - 1`` equal strides (itertools.accumulate adds them left to right, as the reference's loop does), each
    index the nearest integer with ties to even (the reference's Python round)."""
    import itertools
    import math

    stride = (num_steps - 1) / (count - 1)
    positions = itertools.accumulate([0.0] + [stride] * (count - 1))
    out = []
    for p in positions:
        lo = math.floor(p)
        frac = p - lo
        out.append(lo + 1 if frac > 0.5 or (frac == 0.5 and lo % 2) else lo)
    return out


def test_space_indices_match_the_reference_rule():
    assert i2sb.space_indices(1000, 2) == [0, 999]
    for count in range(2, 1001):
        assert i2sb.space_indices(1000, count) == _reference_grid(1000, count), count
    for num_steps, count in ((10, 4), (37, 9), (999, 50)):
        assert i2sb.space_indices(num_steps, count) == _reference_grid(num_steps, count)
    # NFE 20 is where the rules part: the accumulated position 499.49999... rounds down; 10 * 49.95 = 499.5 would
    # round (to even) up to 500
    idx = i2sb.space_indices(1000, 21)
    assert idx[10] == 499 and round(10 * 999 / 20) == 500
    assert idx[0] == 0 and idx[-1] == 999 and len(set(idx)) == 21
    with pytest.raises(ValueError, match="sr_nfe"):
        i2sb.space_indices(1000, 1)


def test_i2sb_loss_cfa_detach_defaults_to_the_reference_and_changes_only_the_gradient():
    """cfa_detach (default True, the reference's): the stored CFA keys/values carry no gradient. The loss value is
    the same either way; the gradients differ (False adds the path through the stored keys/values), and the
    default's equal cfa_detach=True's."""
    from afcore import ldm

    torch.manual_seed(0)
    unet = ldm.latent_unet((8, 16), latent_channels=4, sample_size=8, groups=4)
    s = i2sb.bridge_schedule()
    x0, x1 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)), \
        torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))

    def run(**kw):
        loss, _ = i2sb.i2sb_loss(unet, x0, x1, s, torch.Generator().manual_seed(3), eq_weight=1.0, **kw)
        grads = torch.autograd.grad(loss, list(unet.parameters()))
        return loss.detach(), torch.cat([g.flatten() for g in grads])

    (l_def, g_def), (l_true, g_true), (l_false, g_false) = run(), run(cfa_detach=True), run(cfa_detach=False)
    torch.testing.assert_close(l_def, l_false)
    torch.testing.assert_close(g_def, g_true, rtol=1e-5, atol=1e-7)
    assert (g_false - g_true).norm() > 0.01 * g_true.norm()


def _matched_band_reference(ref, frames, image_shifts, cutoff, numtaps):
    """An independent numpy/scipy twin of ``matched_band_spsnr`` for integer image shifts (where the Fourier shift
    is a roll): scipy's Kaiser firwin, wrap-around convolution, the eroded mask by brute force."""
    import numpy as np
    import scipy.ndimage
    import scipy.signal

    taps = scipy.signal.firwin(numtaps, cutoff, window=("kaiser", 8.0), fs=2.0)
    lp = lambda a: scipy.ndimage.convolve1d(scipy.ndimage.convolve1d(a, taps, axis=-1, mode="wrap"),  # noqa: E731
                                            taps, axis=-2, mode="wrap")
    ref_lp = lp(ref.numpy())
    h, w = ref.shape[-2:]
    r = numtaps // 2
    out = []
    for y, (dy, dx) in zip(frames, image_shifts):
        valid = np.zeros((h, w), bool)
        for i in range(h):
            for j in range(w):
                valid[i, j] = 0 <= i - dy <= h - 1 and 0 <= j - dx <= w - 1
        eroded = np.array([[all(valid[(i + a) % h, (j + b) % w] for a in range(-r, r + 1) for b in range(-r, r + 1))
                            for j in range(w)] for i in range(h)])
        err = (lp(y.numpy()) - np.roll(ref_lp, (dy, dx), axis=(-2, -1))) ** 2
        mse = err[..., eroded].reshape(len(y), -1).mean(1)
        out.append(20 * np.log10(2.0) - 10 * np.log10(mse))
    return np.stack(out)


def test_matched_band_spsnr_agrees_with_a_scipy_reference():
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(3, 3, 24, 24, generator=g, dtype=torch.float64) * 2 - 1
    shifts = [(0.0, 0.25), (0.5, 0.0), (0.25, 1.0)]  # latent px; x4 -> whole image px, where a Fourier shift is a roll
    image_shifts = [(int(4 * a), int(4 * b)) for a, b in shifts]
    frames = torch.stack([torch.roll(ref, s, dims=(-2, -1)) + 0.05 * torch.randn(ref.shape, generator=g,
                                                                               dtype=torch.float64)
                          for s in image_shifts])
    got = i2sb.matched_band_spsnr({"reference": ref, "frames": frames}, shifts, cutoff=0.5, factor=4, numtaps=7)
    want = _matched_band_reference(ref, frames, image_shifts, 0.5, 7)
    assert got.shape == (3, 3)
    assert abs(got.numpy() - want).max() < 1e-6


def test_matched_band_spsnr_ignores_detail_above_the_cutoff():
    """Detail at the Nyquist frequency that differs between the two runs costs raw SPSNR but not matched-band SPSNR
    below it; detail inside the band costs both."""
    g = torch.Generator().manual_seed(1)
    ref = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    shifts = [(0.0, 0.5), (0.0, 1.0)]
    checker = 0.2 * (-1.0) ** torch.arange(32)[None, :].expand(32, 32)
    slow = torch.full((32, 32), 0.2)  # DC: the filter passes it unchanged (unit DC gain)
    shifted = [fourier_shift(ref, (0.0, 4 * d[1])) for d in shifts]
    high = i2sb.matched_band_spsnr({"reference": ref, "frames": torch.stack([s + checker for s in shifted])},
                                   shifts, cutoff=0.25)
    low = i2sb.matched_band_spsnr({"reference": ref, "frames": torch.stack([s + slow for s in shifted])},
                                  shifts, cutoff=0.25)
    raw_db = 20 * torch.log10(torch.tensor(2.0)) - 10 * torch.log10(torch.tensor(0.04))  # the raw score of either
    assert float(high.min()) > float(raw_db) + 40
    assert abs(low - raw_db).max() < 1e-3
