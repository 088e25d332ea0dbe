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
    assert claims.lookup({"lp0.5": {"z": 5}}, "lp0%2E5.z") == 5  # a dot inside a key, escaped
    for bad in ("a.5", "b.d", "b.c.e"):
        with pytest.raises(claims.ClaimError):
            claims.lookup(data, bad)


def _load(name):
    return json.loads((REPO_ROOT / "metrics" / name).read_text())


def _resolved(delta, se):
    return abs(delta) > 2 * se


def test_readme_directions_hold_for_the_config_table():
    """README's reading of the Config table: which seed-level contrasts to A are resolved, how many seeds agree, and
    their signs. A re-run that changes a verdict fails here, so the sentence is rewritten, not just its numbers."""
    report = _load("14_configs_report.json")
    c = report["contrasts"]
    assert report["scale"]["training_seeds"] and len(report["scale"]["training_seeds"]) >= 5

    def contrast(metric, config):
        return c[f"mnist/{metric}: {config} - A"]

    for config in ("B-1N", "D-1N"):  # primary: resolved after Holm, every seed the same way
        s = contrast("sample_spsnr_db", config)
        assert s["primary"] and s["mean"] > 0 and s["p_holm"] < 0.05 and s["seeds_agreeing"] == s["n_seeds"]
        assert max(s["per_seed"]) - min(s["per_seed"]) > 1.0  # "from near 0 to almost 3 dB"
    assert contrast("denoiser_spsnr_db", "B-1N")["p"] >= 0.05  # "B-1N does not differ"
    d = contrast("denoiser_spsnr_db", "D-1N")  # "lower in every seed"
    assert d["mean"] < 0 and d["p"] < 0.05 and d["seeds_agreeing"] == d["n_seeds"]
    fid = contrast("FID", "D-1N")  # "higher (worse) in every seed"; B-1N's not resolved
    assert fid["mean"] > 0 and fid["p"] < 0.05 and fid["seeds_agreeing"] == fid["n_seeds"]
    assert contrast("FID", "B-1N")["p"] >= 0.05
    rot = contrast("rotation_psnr_db", "D-1N")  # "not resolved (3 of 5 seeds favour D-1N)"
    assert rot["p"] >= 0.05 and rot["mean"] > 0 and rot["seeds_agreeing"] == 3


def test_readme_directions_hold_for_af_vae():
    """README's reading of the AF-VAE seed-level contrasts."""
    c = _load("20_af_vae.json")["seed_contrasts"]
    for m in ("enc_spsnr", "dec_spsnr", "recon_psnr"):  # all three primaries resolved, every seed agreeing
        s = c[f"af_vae_minus_vanilla_finetuned: {m}"]
        assert s["primary"] and s["p_holm"] < 0.05 and s["seeds_agreeing"] == s["n_seeds"], m
        assert (s["mean"] < 0) == (m == "recon_psnr"), m
    pre = {m: c[f"af_vae_minus_vanilla_pretrained: {m}"]["mean"] for m in ("enc_spsnr", "dec_spsnr", "recon_psnr")}
    assert pre["enc_spsnr"] < 15 or pre["dec_spsnr"] < 8 or pre["recon_psnr"] < -1.5  # "the goal is not met"
    ideal = c["ideal_sampling_minus_vanilla_finetuned: enc_spsnr"]["mean"]  # "most of the gain"
    assert ideal > c["af_vae_minus_filtered_nonlinearity: enc_spsnr"]["mean"] > 0
    f = c["filtered_nonlinearity_minus_ideal_sampling: enc_spsnr"]  # "lowers Enc slightly in every seed"
    assert f["mean"] < 0 and f["seeds_agreeing"] == f["n_seeds"]
    assert c["af_vae_minus_filtered_nonlinearity: enc_spsnr"]["p"] < 0.05
    assert c["af_vae_minus_filtered_nonlinearity: dec_spsnr"]["p"] >= 0.05
    v = c["vanilla_eq_loss_minus_af_vae: enc_spsnr"]
    assert v["mean"] < 0 and v["p"] < 0.05
    v = c["vanilla_eq_loss_minus_af_vae: dec_spsnr"]
    assert v["mean"] < 0 and v["p"] >= 0.05 and v["seeds_agreeing"] == v["n_seeds"]
    assert c["vanilla_eq_loss_minus_af_vae: recon_psnr"]["mean"] > 0 and c["vanilla_eq_loss_minus_af_vae: rFID"]["mean"] < 0


def test_readme_directions_hold_for_af_ldm_and_video():
    c = _load("30_af_ldm.json")["seed_contrasts"]

    def s(k, m):
        return c[f"{k}: {m}"]

    for m in ("image_spsnr", "latent_spsnr"):  # the headline: every seed ahead, not resolved after Holm
        h = s("af_ldm_minus_vanilla_vae_cfa", m)
        assert h["primary"] and 0 < h["mean"] < 5 and h["seeds_agreeing"] == h["n_seeds"] and h["p_holm"] >= 0.05, m
    fid = s("af_ldm_minus_vanilla_vae_cfa", "FID")
    assert fid["mean"] > 0 and fid["seeds_agreeing"] == fid["n_seeds"] and fid["p"] >= 0.05
    for m in ("image_spsnr", "latent_spsnr"):  # the loss beyond its extra steps: resolved, every seed
        e = s("eq_loss_no_cfa_minus_filtered_nonlinearity_continued", m)
        assert e["mean"] > 0 and e["p"] < 0.05 and e["seeds_agreeing"] == e["n_seeds"], m
    a = s("af_ldm_minus_filtered_nonlinearity_continued", "image_spsnr")
    assert a["primary"] and a["mean"] > 0 and a["p_holm"] >= 0.05 and a["seeds_agreeing"] == a["n_seeds"]
    extra = s("filtered_nonlinearity_continued_minus_filtered_nonlinearity", "image_spsnr")["mean"]
    step = s("eq_loss_no_cfa_minus_filtered_nonlinearity", "image_spsnr")["mean"]
    assert 0.15 < extra / step < 0.35  # "about a quarter"
    for m in ("image_spsnr", "latent_spsnr"):  # CFA in the loss: nothing measurable
        assert s("af_ldm_minus_eq_loss_no_cfa", m)["p"] >= 0.05
    v = s("vanilla_vae_cfa_minus_vanilla_vae", "image_spsnr")
    assert v["mean"] > 0 and v["seeds_agreeing"] == v["n_seeds"]
    r = s("af_ldm_random_minus_af_ldm", "latent_spsnr"), s("af_ldm_random_minus_af_ldm", "image_spsnr")
    assert r[0]["mean"] > 0 and r[1]["mean"] < 0
    assert _load("30_af_ldm.json")["per_step_gap_af_ldm_minus_standard"]["min_db"] > 0
    nw = _load("40_noise_warping.json")
    video = nw["ratios"]
    assert video["T2"]["wd_over_gp_warping_latent_paired"]["verdict"] == "lower"
    assert video["T2"]["wd_over_gp_warping_pixel_paired"]["verdict"] == "not resolved"
    assert video["T2"]["wd_over_gp_warping_latent"] > 0.1  # "we do not reproduce its size" (paper 0.016)
    assert video["T3"]["wd_over_gp_warping_latent_paired"]["verdict"] == "not resolved"
    assert video["T3"]["wd_over_gp_warping_pixel_paired"]["verdict"] == "higher"
    for t in ("T2", "T3"):
        ctl = {c["row"]: c for c in nw["tables"][t]["controls"]}
        assert (ctl["VAE ceiling: ground truth through the VAE"]["psnr"]["mean"]
                < ctl["Input: bicubic upsampled (pixels)"]["psnr"]["mean"])  # the pixel input is out of reach
        pairs = {(p["a"], p["b"]): p for p in nw["tables"][t]["paired"]}
        vs_input = pairs[("GP Warping", "Input: bicubic through the VAE")]["psnr"]
        assert vs_input["diff"] > 0 and vs_input["verdict"] == ("not resolved" if t == "T2" else "higher")
    assert nw["tables"]["T3"]["paired"][6]["psnr"]["verdict"] == "lower"  # Warped Diffusion - GP Warping
    ex = {r["run"]: r["latent_prev"]["mean"] for r in nw["tables"]["T3"]["exact_warp_guidance_pans"]}
    assert ex["exact warp, lambda=1.0"] < ex["bilinear warp, lambda=1.0"] < ex["no guidance (guided steps)"]
    edit = _load("41_video_editing.json")
    rows = {r["row"]: r for r in edit["table6"]}
    d = {x["key"]: x for x in edit["differences"]}
    af, st, gt = "AF-LDM + CFA", "standard LDM + CFA", "ground-truth reference (true edit)"
    ceil = {m: f"{m} VAE ceiling: true edit" for m in ("AF-LDM", "standard LDM")}
    assert rows[af]["we_nb"][0] < rows[st]["we_nb"][0]  # ratio below 1 ...
    assert not d[f"{af} minus {st}, we_nb"]["resolved"]  # ... but not resolved
    assert not d[f"{af} minus {st}, hf_ratio"]["resolved"]
    for k in (f"{af} minus {st}, edit_psnr_db", f"{ceil['AF-LDM']} minus {ceil['standard LDM']}, edit_psnr_db"):
        assert d[k]["resolved"] and d[k]["diff"] < 0  # the AF-LDM (and its VAE ceiling) further from the true edit
    for m in ("we_nb", "edit_psnr_db", "hf_ratio"):  # CFA: no resolved change in either model
        assert not d[f"{af} minus AF-LDM, no CFA, {m}"]["resolved"]
        assert not d[f"{st} minus standard LDM, no CFA, {m}"]["resolved"]
    for row, model in ((st, "standard LDM"), (af, "AF-LDM")):
        assert rows[row]["hf_ratio"][0] < 0.1  # "a few per cent" of the true edit's detail
        assert d[f"{row} minus {ceil[model]}, hf_ratio"]["resolved"] and d[f"{row} minus {ceil[model]}, hf_ratio"]["diff"] < 0
        assert not d[f"{row} minus {gt}, we_nb"]["resolved"]
    assert not any(x["resolved"] for x in edit["interpolation"]["differences"])


def test_readme_directions_hold_for_latent_sr():
    d = _load("50_latent_sr.json")["differences"]
    q = _load("50_latent_sr.json")["quality"]
    for name in ("LDM-I2SB", "AF-I2SB"):  # "both models beat their input, neither beats bicubic"
        assert d[f"{name} minus its identity SR"]["sr_psnr"]["resolved"]
        assert d[f"{name} minus its identity SR"]["sr_psnr"]["diff_db"] > 0
        assert d[f"{name} minus bicubic up x4"]["sr_psnr"]["diff_db"] < 0
    for vae in ("vanilla VAE", "AF-VAE"):  # ... because both ceilings sit below bicubic
        assert q[f"VAE ceiling, {vae}"]["psnr_db"][0] < q["bicubic up x4"]["psnr_db"][0]
    beyond = d["AF-I2SB + CFA minus LDM-I2SB + CFA, beyond their identity SR"]
    for part in ("image_spsnr", "image_lp0.25_spsnr", "image_lp0.5_spsnr"):  # resolved, at matched bandwidth too
        assert beyond[part]["resolved"] and beyond[part]["diff_db"] > 0, part
        assert beyond[part]["diff_db"] >= beyond["image_spsnr"]["diff_db"], part  # "at least as large as full-band"


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
