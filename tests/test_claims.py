"""Numbers quoted in README, docs and notebook text match metrics/ (workbook.claims), and the checker itself works."""
import json

import pytest

from workbook import claims
from afcore.utils import REPO_ROOT


def test_every_quoted_number_matches_metrics():
    problems = claims.scan(REPO_ROOT)
    assert not problems, "\n".join(problems) + "\n(run `python -m workbook.claims --fix`, then re-read the prose)"
    assert claims.count(REPO_ROOT) > 0


def test_the_checker_finds_a_drifted_number_and_fix_rewrites_it(tmp_path):
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "m.json").write_text(json.dumps(
        {"rows": [{"config": "A", "fid": 12.345}, {"config": "D-1N", "fid": 9.87}], "gain": 0.0312}))
    readme = tmp_path / "README.md"
    readme.write_text("FID 12.3<!--m:m.json:rows[config=A].fid:.1f--> and | 9.9<!--m:m.json:rows.1.fid:.1f--> |"
                      " gain 3.1%<!--m:m.json:gain:.1%-->\n")
    assert claims.scan(tmp_path) == []
    readme.write_text(readme.read_text().replace("12.3<", "12.4<"))
    problems = claims.scan(tmp_path)
    assert len(problems) == 1 and "'12.4'" in problems[0] and "'12.3'" in problems[0]
    assert claims.scan(tmp_path, fix=True) == []
    assert "FID 12.3<!--" in readme.read_text() and claims.scan(tmp_path) == []
    readme.write_text("x 1<!--m:m.json:rows[config=B].fid:.1f--> y 2<!--m:nope.json:a-->\n")
    problems = claims.scan(tmp_path)
    assert len(problems) == 2 and "config=B" in problems[0] and "nope.json" in problems[1]


def test_lookup_rejects_bad_paths():
    data = {"a": [1, 2], "b": {"c": 3}}
    assert claims.lookup(data, "b.c") == 3 and claims.lookup(data, "a.-1") == 2
    assert claims.lookup({"x: y": {"z": 4}}, "x%3A y.z") == 4  # a colon inside a key, escaped
    for bad in ("a.5", "b.d", "b.c.e"):
        with pytest.raises(claims.ClaimError):
            claims.lookup(data, bad)


def _load(name):
    return json.loads((REPO_ROOT / "metrics" / name).read_text())


def _resolved(delta, se):
    return abs(delta) > 2 * se


def test_readme_directions_hold_for_the_config_table():
    """README's reading of the Config A-E table: which differences to A are resolved, and their signs. A re-run that
    changes a verdict fails here, so the sentence is rewritten, not just its numbers."""
    gaps = _load("14_configs_report.json")["spsnr_gap_to_A"]

    def gap(k, q):
        return gaps[k][q]["diff_db"], gaps[k][q]["sem_db"]

    for k in ("mnist/B-1N", "mnist/D-1N"):  # "both only just beyond twice their error"
        d, se = gap(k, "sample_spsnr_db")
        assert 2 * se < d < 3 * se, k
    d, se = gap("mnist/C-1N", "sample_spsnr_db")  # "points the same way but is not resolved"
    assert d > 0 and not _resolved(d, se)
    for k in ("mnist_m/B-1N", "mnist_m/C-1N", "mnist_m/D-1N"):
        assert not _resolved(*gap(k, "sample_spsnr_db")) and not _resolved(*gap(k, "denoiser_spsnr_db")), k
    for k in ("mnist/C-1N", "mnist/D-1N"):
        d, se = gap(k, "denoiser_spsnr_db")
        assert d < 0 and _resolved(d, se), k
    rot = _load("14_configs_report.json")["rotation_consistency"]
    def rot_gap(s):
        a, d = rot[f"{s}/A"], rot[f"{s}/D-1N"]
        return a["psnr_db"] - d["psnr_db"], (a["sem_db"] ** 2 + d["sem_db"] ** 2) ** 0.5

    d, se = rot_gap("mnist")  # "A is ahead of D-1N by a difference just beyond twice its error"
    assert 2 * se < d < 3 * se
    assert not _resolved(*rot_gap("mnist_m"))


def test_readme_directions_hold_for_af_ldm_and_video():
    c = _load("30_af_ldm.json")["comparisons"]

    def delta(k, m):
        return c[k][f"{m}_spsnr_delta_db"], c[k][f"{m}_spsnr_delta_se_db"]

    goal = c["af_ldm_minus_vanilla_vae_cfa"]
    d, se = delta("af_ldm_minus_vanilla_vae_cfa", "image")
    assert 0 < d < 5 and _resolved(d, se) and goal["fid_ratio"] <= 1.3  # a resolved gain, short of the +5 dB goal
    for m in ("image", "latent"):  # the equivariance-loss rows: the largest resolved step
        d, se = delta("eq_loss_no_cfa_minus_filtered_nonlinearity", m)
        assert d > 0 and _resolved(d, se) and d == max(c[k][f"{m}_spsnr_delta_db"] for k in (
            "af_vae_minus_vanilla_vae", "ideal_sampling_minus_af_vae_cfa", "filtered_nonlinearity_minus_ideal_sampling",
            "eq_loss_no_cfa_minus_filtered_nonlinearity", "af_ldm_minus_eq_loss_no_cfa")), m
    d, se = delta("af_ldm_minus_eq_loss_no_cfa", "latent")  # CFA in the loss: resolved in latent SPSNR ...
    assert d > 0 and _resolved(d, se)
    d, se = delta("af_ldm_minus_eq_loss_no_cfa", "image")  # ... just short of twice its error in image SPSNR
    assert 1.5 * se < d <= 2 * se
    d, se = delta("ideal_sampling_minus_af_vae_cfa", "latent")
    assert d < 0 and _resolved(d, se)
    assert not _resolved(*delta("filtered_nonlinearity_minus_ideal_sampling", "image"))
    for m in ("image", "latent"):  # "not distinguishable from AF-LDM"
        assert not _resolved(*delta("plain_unet_eq_loss_minus_af_ldm", m)), m
    assert not _resolved(*delta("ideal_sampling_minus_af_vae_cfa", "image"))
    assert _load("30_af_ldm.json")["per_step_gap_af_ldm_minus_standard"]["min_db"] > 0
    video = _load("40_noise_warping.json")["ratios"]
    assert video["T2"]["wd_over_gp_warping_latent"] < 0.1 and video["T3"]["wd_over_gp_warping_latent"] > 1
    rows = {r["row"]: r for r in _load("41_video_editing.json")["table6"]}
    s, a = rows["standard LDM + CFA"]["we_nb"], rows["AF-LDM + CFA"]["we_nb"]
    assert a[0] < s[0] and not _resolved(s[0] - a[0], (s[1] ** 2 + a[1] ** 2) ** 0.5)


def test_fix_refuses_numbers_from_another_profile_and_writes_nothing(tmp_path):
    """A smoke run writes into the same metrics/: its numbers must not replace cpu-profile prose, not even in part."""
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "cpu.json").write_text(json.dumps({"profile": "cpu", "fid": 12.0}))
    (tmp_path / "metrics" / "smoke.json").write_text(json.dumps({"profile": "smoke", "fid": 1053.9}))
    readme = tmp_path / "README.md"
    text = "FID 11.0<!--m:cpu.json:fid:.1f--> and 42.5<!--m:smoke.json:fid:.1f-->\n"
    readme.write_text(text)
    problems = claims.scan(tmp_path, fix=True)
    assert any("'smoke' profile" in p and "smoke.json" in p for p in problems)
    assert readme.read_text() == text  # the cpu number was not rewritten either
    assert any("'cpu' profile" in p for p in claims.scan(tmp_path, fix=True, profile="smoke"))
    readme.write_text("FID 42.5<!--m:smoke.json:fid:.1f-->\n")  # prose about a smoke run may quote smoke numbers
    assert claims.scan(tmp_path, fix=True, profile="smoke") == []
    assert "FID 1053.9<!--" in readme.read_text()
