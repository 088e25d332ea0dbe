"""Stage af_ldm on the smoke profile: outputs, metric properties, resume, config checks."""
from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from afcore.stages import af_ldm
from afcore.stages.common import ConfigError
from afcore.surgery import load_alias_free

_RUNS: dict = {}  # device -> (workspace, metrics): one stage run per device for the whole module


def _workspace(smoke_workspace, tmp_path_factory, device) -> Path:
    """A fresh folder holding only the stage's inputs (so every model really trains here)."""
    upstream = smoke_workspace("af_vae", "classifier")
    root = tmp_path_factory.mktemp(f"af_ldm_{device}")
    shutil.copytree(upstream / "data", root / "data")
    for sub in ("vae", "classifier"):
        shutil.copytree(upstream / "checkpoints" / sub, root / "checkpoints" / sub)
    return root


@pytest.fixture
def stage_run(stage_device, smoke_workspace, smoke_params, tmp_path_factory, device_checks):
    if stage_device not in _RUNS:
        root = _workspace(smoke_workspace, tmp_path_factory, stage_device)
        cfg = af_ldm.Config.from_params(smoke_params)
        with device_checks(stage_device):
            metrics = af_ldm.run(cfg, stage_device, root)
        _RUNS[stage_device] = (cfg, root, metrics)
    return _RUNS[stage_device]


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_run_writes_every_output(stage_run, stage_device):
    cfg, root, metrics = stage_run
    for name in ("30_af_ldm.json", "30_af_ldm_loss.csv", "30_af_ldm_per_step.csv", "30_af_ldm_spsnr_vs_shift.csv"):
        assert (root / "metrics" / name).stat().st_size > 0, name
    assert json.loads((root / "metrics" / "30_af_ldm.json").read_text()) == json.loads(json.dumps(metrics))
    for name in ("pan.gif", "spsnr_per_step.png"):  # the figures the README shows
        assert (root / "figures" / "30_af_ldm" / name).stat().st_size > 0, name
    for key in af_ldm.MODELS:  # sampling weights for the downstream stages, loadable on the CPU
        assert (root / "checkpoints" / "ldm" / key / "unet" / "config.json").exists(), key
    assert metrics["device"].startswith(stage_device)
    assert metrics["scale"]["latent_shape"] == [4, 8, 8] and len(metrics["scale"]["spsnr_shifts"]) == 2
    # the loss CSV: every step of every model, the continued rows counted after their base row's steps
    rows = list(csv.DictReader(open(root / "metrics" / "30_af_ldm_loss.csv")))
    continued = [k for k, m in af_ldm.MODELS.items() if m[5]]
    eq_rows = [k for k, m in af_ldm.MODELS.items() if m[3]]
    assert set(eq_rows) < set(continued)  # the controls continue without the loss
    n_scratch = len(af_ldm.MODELS) - len(continued)
    assert len(rows) == cfg.ldm_train_steps * n_scratch + cfg.ldm_finetune_steps * len(continued)
    for r in rows:
        assert math.isfinite(float(r["diffusion"])) and float(r["diffusion"]) > 0
        if r["model"] in continued:
            assert int(r["step"]) > cfg.ldm_train_steps
        if r["model"] in eq_rows:
            assert float(r["equivariance"]) >= 0
        else:
            assert math.isnan(float(r["equivariance"]))


def test_table_and_paired_comparisons(stage_run):
    _, _, metrics = stage_run
    by_row, fid_name = metrics["by_row"], "FID[rand-natural32]"
    assert [r["key"] for r in metrics["table"]] == [r[0] for r in af_ldm.ROWS] == list(by_row)
    for key, row in by_row.items():
        for m in ("latent", "image"):
            assert _finite(row[f"{m}_spsnr_db"]) and 0 < row[f"{m}_spsnr_db"] < 200, (key, m)
            assert _finite(row[f"{m}_spsnr_se_db"]) and row[f"{m}_spsnr_se_db"] >= 0
        if row["model"] == "random":
            assert row[fid_name] is None and row["fid_boot_se"] is None
        else:
            assert _finite(row[fid_name]) and row[fid_name] >= 0 and row["fid_boot_se"] > 0
    # "+ CFA" rows reuse their model: same FID
    assert by_row["vanilla_vae_cfa"][fid_name] == by_row["vanilla_vae"][fid_name]
    assert list(metrics["comparisons"]) == [f"{a}_minus_{b}" for a, b in af_ldm.COMPARISONS]
    for (a, b), c in zip(af_ldm.COMPARISONS, metrics["comparisons"].values()):
        for m in ("latent", "image"):  # the mean of the per-latent differences is the difference of the means
            assert c[f"{m}_spsnr_delta_db"] == pytest.approx(by_row[a][f"{m}_spsnr_db"] - by_row[b][f"{m}_spsnr_db"],
                                                             abs=1e-4)
        if "fid_delta" in c:
            assert c["fid_delta"] == by_row[a][fid_name] - by_row[b][fid_name]
            assert c["fid_ratio"] == by_row[a][fid_name] / by_row[b][fid_name]
        else:
            assert "random" in (by_row[a]["model"], by_row[b]["model"])
    goal = metrics["comparisons"]["af_ldm_minus_vanilla_vae_cfa"]
    assert metrics["goal_check"]["image_spsnr_gain_db"] == goal["image_spsnr_delta_db"]
    assert metrics["goal_check"]["fid_ratio"] == goal["fid_ratio"]
    v = af_ldm.verdicts(metrics["comparisons"])
    assert len(v) == 2 * len(af_ldm.COMPARISONS) + sum("fid_delta" in c for c in metrics["comparisons"].values())
    assert {x["verdict"] for x in v} <= {"higher", "lower", "not resolved"}
    assert all((x["verdict"] == "not resolved") == (abs(x["delta"]) <= 2 * x["se"]) for x in v)
    assert all(s > 0 for s in metrics["sampling_seconds_per_image"].values())
    assert set(metrics["train_seconds"]) == set(af_ldm.MODELS)


def test_seed_level_contrasts(stage_run):
    """Every comparison once per training seed, the base seed's value first; the seed mean of a paired contrast is
    the difference of the rows' seed means; further seeds train in their own folder, in that seed's VAE latents."""
    cfg, root, metrics = stage_run
    assert metrics["training_seeds"] == cfg.seeds and len(cfg.seeds) >= 2
    contrasts, by_row = metrics["seed_contrasts"], metrics["seed_by_row"]
    for name, c in metrics["comparisons"].items():
        a, b = (by_row[c[k]] for k in ("row_key", "baseline_key"))
        for m in ("latent", "image"):
            s = contrasts[f"{name}: {m}_spsnr"]
            assert s["per_seed"][0] == pytest.approx(c[f"{m}_spsnr_delta_db"], abs=1e-12)
            assert s["mean"] == pytest.approx(a[f"{m}_spsnr_db"] - b[f"{m}_spsnr_db"], abs=1e-4)
            assert len(s["per_seed"]) == len(cfg.seeds) and s["primary"] == (f"{name}: {m}_spsnr" in af_ldm.PRIMARY)
    assert sum(c["primary"] for c in contrasts.values()) == len(af_ldm.PRIMARY)
    for seed in cfg.seeds[1:]:
        for key in af_ldm.MODELS:
            assert (root / "checkpoints" / "ldm" / f"seed{seed}" / key / "unet" / "config.json").exists(), key


def test_per_step_and_sweep_csvs(stage_run):
    cfg, root, metrics = stage_run
    rows = list(csv.DictReader(open(root / "metrics" / "30_af_ldm_per_step.csv")))
    gap = [r for r in rows if r["model"] == "AF-LDM minus standard LDM"]
    assert len(rows) == 3 * cfg.ldm_sample_steps and [int(r["step"]) for r in gap] == [1, 2]
    summary = metrics["per_step_gap_af_ldm_minus_standard"]
    assert float(gap[-1]["latent_spsnr_db"]) == summary["last_step_db"]
    assert summary["min_db"] <= summary["first_step_db"] <= summary["max_db"]
    sweep = list(csv.DictReader(open(root / "metrics" / "30_af_ldm_spsnr_vs_shift.csv")))
    assert len(sweep) == 4 * cfg.ldm_sweep_eighths  # 2 decoders + 2 LDMs, one row per shift
    assert {r["part"] for r in sweep} == {"decoder", "ldm"}
    assert sorted({float(r["latent_shift"]) for r in sweep}) == [0.125, 0.25]
    assert all(math.isfinite(float(r["spsnr_db"])) for r in sweep)


def test_resume_trains_no_extra_step(stage_run, stage_device, monkeypatch):
    """A second ``train_rows`` on the same workspace resumes every model at its last step: no loss is computed and
    the sampling weights are those of the first run."""
    cfg, root, _ = stage_run
    calls = []
    real = af_ldm.ldm.ldm_loss
    monkeypatch.setattr(af_ldm.ldm, "ldm_loss", lambda *a, **k: calls.append(1) or real(*a, **k))
    dev = af_ldm.setup(cfg, stage_device)
    inputs = af_ldm.load_inputs(cfg, dev, root)
    models = af_ldm.train_rows(cfg, inputs, root)
    assert calls == []
    from diffusers import UNet2DModel

    first = load_alias_free(UNet2DModel, root / "checkpoints" / "ldm" / "af_ldm" / "unet")
    for a, b in zip(models["trained"]["af_ldm"].state_dict().values(), first.state_dict().values()):
        assert torch.equal(a.cpu(), b)
    assert [h["step"] for h in models["histories"]["af_ldm"]] == list(range(1, cfg.ldm_finetune_steps + 1))


@pytest.mark.parametrize("key, value, match", [
    ("ldm_spsnr_latents", 5, "ldm.ldm_spsnr_latents"),
    ("ldm_stop_grad", "both", "ldm.ldm_stop_grad"),
    ("ldm_schedule", "cosine", "ldm.ldm_schedule"),
    ("ldm_channels", [8], "ldm.ldm_channels"),
    ("ldm_channels", [8, 12], "ldm.ldm_channels"),
    ("ldm_image_size", 64, "ldm.ldm_image_size"),
    ("ldm_dataset", "ffhq", "ldm.ldm_dataset"),
    ("ldm_ema_decay", 1.0, "ldm.ldm_ema_decay"),
    ("ldm_fid_samples", 1, "ldm.ldm_fid_samples"),
    ("ldm_batch", 0, "ldm.ldm_batch"),
    ("ldm_lr", "fast", "ldm_lr"),
    ("ldm_seeds", 0, "ldm.ldm_seeds"),
    ("ldm_spsnr_protocol", "paper", "ldm.ldm_spsnr_protocol"),
    ("ldm_models", ["af_ldm", "bogus"], "ldm.ldm_models"),
    ("ldm_models", ["ldm_vanilla_vae", "af_ldm", "filtered_nonlinearity_continued"], "ldm.ldm_models"),
])
def test_bad_config_values_name_the_key(smoke_params, key, value, match):
    with pytest.raises(ConfigError, match=match):
        af_ldm.Config.from_params(smoke_params, **{key: value})


def test_config_defaults_are_the_notebook_parameters_and_cpu_profile():
    from workbook import params
    from workbook.run import parameter_names

    declared = parameter_names(Path(__file__).parents[1] / "notebooks" / "30_af_ldm.py")
    defaults = af_ldm.Config().as_dict()
    assert declared == defaults and declared["device"] == "auto"
    assert af_ldm.Config.from_params(params.build("cpu")) == af_ldm.Config()
    for profile in ("gpu", "paper"):  # every profile passes the checks
        af_ldm.Config.from_params(params.build(profile))


def test_missing_upstream_names_the_stage(tmp_path, smoke_params):
    with pytest.raises(FileNotFoundError, match="data stage"):
        af_ldm.load_inputs(af_ldm.Config.from_params(smoke_params), torch.device("cpu"), tmp_path)


@pytest.mark.parametrize("protocol, expected", [("workbook", ("circular", "range")),
                                                ("reference", ("crop", "joint-range"))])
def test_spsnr_protocol_reaches_shift_consistency(stage_run, stage_device, monkeypatch, protocol, expected):
    """``ldm_spsnr_protocol`` picks how Table 3 shifts the initial noise and which latent peak it takes."""
    cfg, root, _ = stage_run
    seen = []
    real = af_ldm.ldm.shift_consistency

    def spy(*args, **kwargs):
        seen.append((kwargs["noise_shift"], kwargs["latent_peak"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(af_ldm.ldm, "shift_consistency", spy)
    cfg = cfg.replace(ldm_spsnr_protocol=protocol)
    dev = af_ldm.setup(cfg, stage_device)
    inputs = af_ldm.load_inputs(cfg, dev, root)
    trained = {"af_ldm": af_ldm.build(cfg, inputs, True, True).eval(), "random": af_ldm.build(cfg, inputs, True, True)}
    out = af_ldm.spsnr_eval(cfg, inputs, trained)
    assert set(seen) == {expected} and set(out["consistency"]) == {"af_ldm", "af_ldm_random"}
