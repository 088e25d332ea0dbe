"""The theory notebooks' takeaways, re-checked from their committed metrics (metrics/0N_*.json).

Each assertion restates a sentence of a notebook's "What to notice" text; if a re-run changes the numbers so that the
sentence no longer holds, this fails (the notebooks assert the same inside themselves on every run).
"""
from __future__ import annotations

import json

import pytest

from afcore.utils import REPO_ROOT


def _load(name):
    path = REPO_ROOT / "metrics" / f"{name}.json"
    data = json.loads(path.read_text())
    if data.get("profile") != "cpu":
        pytest.skip(f"{path.name} is from profile {data.get('profile')!r}; claims are stated for cpu")
    return data


def test_00_sampling_claims():
    m = _load("00_sampling_and_aliasing")
    assert all(r["sample_gap"] < 1e-9 for r in m["sinusoids"])
    ma = m["moving_alias"]
    assert ma["sample_gap"] < 1e-9 and ma["alias_shift"] < -2 * ma["content_shift"]  # faster and backwards
    zp = m["zone_plate"]
    assert zp["corner_frequency"] < 0.5 and zp["aliased_energy_fraction"] > 0.5
    # no post-filter recovers the band-limited plate (error AND correlation), the Kaiser pre-filter does, and a
    # flat image, which the error fraction alone would score 1, fails
    crit = zp["recovery_criterion"]

    def recovers(r):
        return r["error_fraction"] <= crit["max_error_fraction"] and r["correlation"] >= crit["min_correlation"]

    assert not any(recovers(r) for r in zp["post_filter"]) and recovers(zp["kaiser_prefilter"])
    assert not recovers(zp["flat_image"]) and zp["flat_image"]["error_fraction"] == pytest.approx(1.0)
    assert zp["best_post_filter_correlation"] < 0.5 and zp["best_post_filter_error_fraction"] > 1.0 - 1e-9
    assert zp["best_post_filter_correlation"] == max(r["correlation"] for r in zp["post_filter"])
    assert zp["alias_mse_inside_clean_square"] < 0.1 * zp["alias_mse_outside_clean_square"]
    ph = m["photo"]
    assert abs(ph["aliased_energy_fraction"] - ph["energy_outside_new_nyquist"]) < 0.02  # Parseval, roughly
    assert ph["folded_energy"]["naive"] > 0.05 and ph["folded_energy"]["kaiser"] < ph["folded_energy"]["naive"] / 5
    assert ph["naive_vs_filtered"]["error_fraction"] > 0.05 and ph["difference_colour_scale"] < 0.5
    st = m["staircase"]["shift_consistency_psnr_db"]
    assert st["band-limited"] > 100 > st["area"] + 40 and st["area"] > st["point"] + 5
    assert abs(m["staircase"]["box_gain_at_nyquist"] - 0.6366) < 0.02


def test_01_filter_claims():
    m = _load("01_filters")
    taps = {r["numtaps"]: r for r in m["numtaps_sweep"]}
    assert all(abs(taps[n]["gain_at_cutoff_db"] + 6.02) < 0.1 for n in (13, 25))
    assert abs(taps[13]["transition_width"] / taps[25]["transition_width"] - 2) < 0.2
    beta = m["beta_sweep"]
    widths = [r["predicted_transition"] for r in beta]
    assert widths == sorted(widths)
    stop = [r["stopband_db"] for r in beta]
    assert max(stop) > stop[-1] + 3  # not monotonic in beta: the old "larger beta, deeper stop-band" is false
    assert all(r["step_overshoot"] < m["ideal_step_overshoot"] for r in beta)
    k = {r["kernel"]: r for r in m["kernels_2d"]}
    assert k["jinc 13 (radial)"]["anisotropy_at_cutoff_db"] < 0.5 < 2 < k["sinc 13 (separable)"]["anisotropy_at_cutoff_db"]
    assert all(-8 < g < -6 for g in k["jinc 13 (radial)"]["gain_at_cutoff_axis_diagonal_db"])
    assert all(-17 < r["max_rel_gain_above_1.5fc_db"] < -8 for n, r in k.items() if n.startswith("3x3"))
    ov = m["image_step_overshoot"]
    assert ov["ideal (FFT) low-pass"] > ov["Kaiser sinc 13, beta 8"]
    # section 5: the normalised 3x3 jinc blurs MOST (lowest pass-band gain at 0.15 c/s) and leaks most
    assert abs(m["passband_probe_frequency"] - 0.15) < 1e-12
    im = {r["filter"]: r for r in m["image_filters"]}
    ideal, kaiser, jinc3 = im["ideal (FFT) low-pass"], im["Kaiser sinc 13, beta 8"], im["3x3 jinc beta 1 N"]
    assert ideal["passband_gain_at_probe"] > kaiser["passband_gain_at_probe"] > jinc3["passband_gain_at_probe"]
    assert abs(kaiser["passband_gain_at_probe"] - 0.91) < 0.01 and abs(jinc3["passband_gain_at_probe"] - 0.78) < 0.01
    assert max(m["jinc3_passband_gain_on_circle_range"]) < 0.8
    assert ideal["stopband_rms_gain"] < 1e-5 < kaiser["stopband_rms_gain"] < jinc3["stopband_rms_gain"]


def test_02_resampling_claims():
    m = _load("02_resampling_and_nonlinearity")
    dn = {r["method"]: r for r in m["downsampling"]}
    avg = dn["avg-pool 2x2"]
    assert avg["relative_error_vs_ideal"] < avg["relative_error_unaligned"] / 3 and avg["relative_error_vs_ideal"] < 0.01
    assert dn["Kaiser 13 low-pass + stride"]["relative_error_vs_ideal"] < avg["relative_error_vs_ideal"]
    up = [r["energy_above_old_nyquist"] for r in m["upsampling"]]
    assert up == sorted(up, reverse=True) and up[-1] < 1e-10
    for r in m["nonlinearity_energy_above_nyquist"]:
        assert r["energy_above_nyquist"] > r["folds_at_2x"] >= r["folds_at_4x"]
        # the proxy resolves the folding bands (3.5-4.5 at 4x): a twice finer one changes no share by 5%
        assert r["proxy"] >= 16 and r["proxy_check"] < 0.05
        assert abs(r["energy_above_nyquist"] - r["removed_at_2x"] - r["folds_at_2x"]) < 1e-12
    nl = {r["activation"]: r for r in m["nonlinearity_energy_above_nyquist"]}
    assert all(nl["relu"]["energy_above_nyquist"] > 10 * nl[a]["energy_above_nyquist"] for a in ("gelu", "silu"))
    assert abs(nl["relu"]["folds_at_4x_8x_proxy"] / nl["relu"]["folds_at_4x"] - 1) > 0.1  # 8x is too coarse
    fa = {r["activation"]: r for r in m["filtered_activation_spsnr"]}
    for r in fa.values():
        assert r["gain_ideal_db"] > 10 and 3 < r["gain_kaiser_db"] < r["gain_ideal_db"]
    assert fa["relu"]["spsnr_ideal_4x_below_nyquist_db"] > fa["relu"]["spsnr_ideal_2x_below_nyquist_db"] + 10
    for name in ("gelu", "silu"):
        assert fa[name]["spsnr_ideal_2x_below_nyquist_db"] > 120
    # section 4: why the cutoff sits below Nyquist. A half-band FIR filter is -6 dB at the output Nyquist whatever
    # its length; a transition band ending at s/2 gives real stop-band attenuation (at the price of band)
    cb = {(r["design"], r["numtaps"]): r for r in m["cutoff_below_nyquist"]}
    for n in (13, 25, 49):
        hb, lo = cb[("half-band", n)], cb[("below Nyquist", n)]
        assert abs(hb["gain_at_output_nyquist_db"] + 6.02) < 0.1
        assert abs(hb["worst_gain_in_folding_band_db"] - hb["gain_at_output_nyquist_db"]) < 0.1
        assert lo["cutoff"] < 0.25 and abs(lo["stopband_edge"] - 0.25) < 1e-12
        assert lo["worst_gain_in_folding_band_db"] < -37 and lo["aliased_fraction"] < hb["aliased_fraction"] / 1000
    assert 0.4 < cb[("below Nyquist", 13)]["gain_at_top_of_signal_band"] < 0.7
    assert cb[("below Nyquist", 25)]["gain_at_top_of_signal_band"] > 0.99
    assert abs(cb[("below Nyquist", 13)]["cutoff"] - 0.16) < 0.01 and abs(cb[("below Nyquist", 25)]["cutoff"] - 0.2) < 0.01
    for r in m["cutoff_below_nyquist_spsnr_db"]:
        assert abs(r["half-band 13"] - fa[r["activation"]]["spsnr_kaiser_2x_db"]) < 0.1
        assert abs(r["half-band 25"] - r["half-band 13"]) < 3
        assert r["below Nyquist 13"] > r["half-band 13"] + 10 and r["below Nyquist 25"] > r["half-band 25"] + 5
        if r["activation"] in ("gelu", "silu"):
            assert r["below Nyquist 25"] > r["half-band 25"] + 20


def test_03_equivariance_claims():
    m = _load("03_equivariance")
    integer = m["integer_shift_spsnr_db"]["standard"]
    assert integer["4"] > 100 > 30 > max(integer["1"], integer["2"], integer["3"])
    assert m["spsnr_gap_db"] > 15 and m["min_spsnr_gap_db"] > 20
    # the shift error is periodic, not falling with the shift: standard period = total stride, alias-free half of it
    assert m["spsnr_period_px"] == {"standard": 4.0, "alias-free": 2.0}
    assert all(v < 0.1 for v in m["spsnr_periodicity_max_diff_db"].values())
    af = m["integer_shift_spsnr_db"]["alias-free"]
    assert af["2"] > 100 > af["1"] and abs(af["1"] - af["3"]) < 0.1
    assert m["mean_abs_wobble"]["standard"] > 5 * m["mean_abs_wobble"]["alias-free"]
    eq = {r["model"]: r for r in m["eq_metrics"]}
    assert eq["alias-free"]["EQ-T_circular_db"] > eq["alias-free"]["EQ-T_db"] + 10  # the border dominates EQ-T
    assert eq["standard"]["EQ-T_db"] < eq["alias-free"]["EQ-T_db"] < eq["standard"]["EQ-T_db"] + 10
    rot = {(r["model"], r["angle"]): r["psnr_db"] for r in m["rotation_psnr"]}
    inner = {(r["model"], r["angle"]): r["psnr_inner_db"] for r in m["rotation_psnr"]}
    d4, one = "alias-free jinc, D4 3x3", "alias-free jinc, 1x1"
    assert rot[(d4, 90.0)] > 60 > 30 > rot[("standard, D4 3x3", 90.0)]
    for a in (10.0, 30.0, 45.0):
        assert rot[(d4, a)] > rot[("standard, D4 3x3", a)] + 3
        assert inner[(d4, a)] > rot[(d4, a)] + 10  # the zero-filled corners at the rim set the whole-circle value
        assert inner[("standard, D4 3x3", a)] < rot[("standard, D4 3x3", a)] + 5  # its stride errors are everywhere
    assert inner[(d4, 10.0)] > inner[(d4, 30.0)] > inner[(d4, 45.0)]  # D4 kernels prefer the grid's directions
    assert max(inner[(one, a)] for a in (10.0, 30.0, 45.0)) - min(inner[(one, a)] for a in (10.0, 30.0, 45.0)) < 3
    assert all(abs(inner[(n, 90.0)] - rot[(n, 90.0)]) < 5 for n in (d4, one))  # a quarter turn fills no corners
    for a in (10.0, 30.0, 45.0, 90.0):
        assert inner[(one, a)] < inner[(d4, a)]  # inside the disk the 1x1 net is below D4 at every angle
    why = m["rotation_1x1_vs_d4"]
    assert why["same_filters"] and why["filter_anisotropy_at_new_nyquist_db"] < 0.5
    for name in ("D4 3x3", "1x1", "D4 centre taps only"):
        assert abs(why[name]["rot90_psnr_db"] - why[name]["shift_1px_spsnr_db"]) < 0.1  # 90 deg = 1-px phase shift
    assert abs(why["d4_kernel_power_vs_dc"]["0.25,0"] - 2 / 9) < 0.05  # E|H|^2 of a random D4 kernel, vs DC
    assert abs(why["d4_kernel_power_vs_dc"]["0.25,0.25"] - 1 / 9) < 0.05
    assert all(a > 2 * b for a, b in zip(why["1x1"]["energy_above_0.2_into_downsamplers"],
                                         why["D4 3x3"]["energy_above_0.2_into_downsamplers"]))
    assert why["D4 3x3"]["rot90_snr_db"] > why["1x1"]["rot90_snr_db"] + 10
    assert why["D4 centre taps only"]["rot90_snr_db"] < why["D4 3x3"]["rot90_snr_db"] - 5


def test_04_design_claims():
    m = _load("04_design")
    for r in m["stylegan3_schedule"]:
        if not r["critically_sampled"]:
            assert r["stopband"] <= r["sampling_rate"] / 2 + 1e-9
    af = [r["aliased_fraction"] for r in m["transition_below_nyquist"]]
    assert af[0] > 50 * af[1]
    assert m["polyphase"]["max_abs_difference"] < 1e-6
    for r in m["sinc_vs_jinc"]["rotation"]:
        assert r["jinc_radial_db"] > r["sinc_separable_db"] + (15 if r["angle"] >= 30 else 5)
    cv = {r["activation"]: r for r in m["continuous_view"]}
    assert all(r["filtered_2x_db"] > r["plain_db"] + 15 for r in cv.values())
    assert cv["relu"]["filtered_4x_db"] > cv["relu"]["filtered_2x_db"] + 5 and cv["gelu"]["filtered_2x_db"] > 100
    b = m["borders"]
    assert b["kaiser"]["reach_px"] <= 12 and b["ideal"]["reach_px"] >= m["size"] // 2 - 1
    assert b["kaiser"]["psnr_at_border_db"] < b["kaiser"]["psnr_centre_zero_db"] - 10
    assert m["layer4_down_filter_gain_at_output_nyquist_db"] < -20
    # StyleGAN3's even-length filter: symmetric, centred between taps (half-sample convention), zero at its Nyquist
    lf = m["layer4_down_filter"]
    assert lf["even"] and lf["numtaps"] % 2 == 0 and lf["centre_expected"] == (lf["numtaps"] - 1) / 2
    assert lf["symmetry_gap"] < 1e-15 and abs(lf["centre_of_mass"] - lf["centre_expected"]) < 1e-9
    assert lf["delay_gap"] < 1e-12 and lf["gain_at_own_nyquist"] < 1e-12
    # border plot: the drawn curves fit the axis, the exact one is marked off scale far above it
    plot = b["plot"]
    lo, hi = plot["ylim_db"]
    assert lo < plot["finite_range_db"][0] and plot["finite_range_db"][1] < hi < plot["exact_threshold_db"]
    assert "ideal, circular, circular shifts" in plot["off_scale_min_db"] and hi - lo < 60
    assert all(v > hi + 50 for v in plot["off_scale_min_db"].values())
    # multiply-adds per output pixel of a rate-keeping filtered nonlinearity
    mac = {(r["factor"], r["filter"]): r for r in m["layer_macs_per_output_pixel"]}
    for (u, kind), r in mac.items():
        n = r["numtaps"]
        assert n == 6 * u + 1 and r["activations"] == u * u
        assert r["total_macs"] == r["up_macs"] + r["down_macs"]
        assert r["total_macs"] == (2 * n * (u + 1) if kind == "separable" else 2 * n * n)
    assert mac[(2, "separable")]["total_macs"] == 78  # notebook 05's 6n at 13 taps
    assert mac[(4, "separable")]["total_macs"] > 3 * mac[(2, "separable")]["total_macs"]
    assert mac[(2, "radial")]["total_macs"] > 3 * mac[(2, "separable")]["total_macs"]
