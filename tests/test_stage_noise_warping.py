"""afcore.stages.noise_warping: the stage on the smoke config (shortened sampling), on every device present."""
from __future__ import annotations

import csv
import json
import math
import shutil

import pytest
import torch

from afcore.stages import noise_warping as stage
from afcore.stages.common import ConfigError

UPSTREAM = ("af_vae",)


def _finite(d):
    return all(math.isfinite(v) for v in (d["mean"], d.get("std", 0.0), d["sem"]))


@pytest.fixture
def small_cfg(smoke_params):
    # the smoke profile with 16 px frames, 2 frames a video and 1 DDIM step a run: every code path of the stage, a
    # fraction of its decoding and sampling time
    return stage.Config.from_params(smoke_params).replace(warp_frame_size=16, warp_frames=2, warp_steps=1,
                                                           warp_guided_steps=1, warp_stat_draws=4)


def test_run_writes_metrics_with_the_promised_properties(stage_device, device_checks, smoke_workspace, small_cfg,
                                                        tmp_path):
    root = smoke_workspace(*UPSTREAM)
    shutil.copytree(root / "checkpoints" / "vae", tmp_path / "checkpoints" / "vae")  # the stage's own run dir
    cfg = small_cfg
    with device_checks(stage_device):
        m = stage.run(cfg, stage_device, tmp_path)

    assert json.loads((tmp_path / "metrics" / "40_noise_warping.json").read_text())["ratios"] == m["ratios"]
    for kind in ("indep", "gp", "indep_cont"):
        assert (tmp_path / "checkpoints" / "warp" / kind / "last.pt").exists()
    with open(tmp_path / "metrics" / "40_noise_warping_we.csv") as fh:
        we = list(csv.DictReader(fh))
    labels = [r[0] for r in stage.rows(cfg)]
    assert len(we) == len(stage.TABLES) * (len(labels) + len(stage.CONTROLS)) * (cfg.warp_frames - 1)
    assert all(float(r[k]) >= 0 for r in we for k in stage.WE_KEYS)

    # the flow convention: warping the right view with the disparity flow reproduces the left view, -flow does not
    assert m["stereo_check"]["mean_abs_err_255"] < m["stereo_check"]["wrong_sign_mean_abs_err_255"]
    stats = {r["method"]: r for r in m["noise_statistics"]}
    assert list(stats) == list(stage.NW.METHODS)
    assert stats["fixed"]["frame2_var"] == stats["fixed"]["frame0_var"]  # the same noise every frame
    assert abs(stats["hiwyn"]["frame0_var"] - 1) < 0.2 and abs(stats["gp_warp"]["frame0_var"] - 1) < 0.5
    assert all(r["ms_per_frame"] > 0 and r["device"].startswith(stage_device) for r in m["cost"])

    for table in stage.TABLES:
        t = m["tables"][table]
        assert [r["row"] for r in t["rows"]] == labels
        for r in t["rows"]:
            assert all(_finite(r[k]) and r[k]["mean"] >= 0 for k in stage.WE_KEYS), r["row"]
            assert 0 < r["psnr"]["mean"] < 80 and -1 <= r["ssim"]["mean"] <= 1 and 0 <= r["mse01"]["mean"] <= 1
        # the guidance sweep: sorted, lambda 0 is the unguided run at the guided step count
        lams = [s["lambda"] for s in t["lambda_sweep"]]
        assert lams == sorted(lams) and lams[0] == 0.0 and cfg.warp_guidance in lams
        by_row = {r["row"]: r for r in t["rows"]}
        wd = next(s for s in t["lambda_sweep"] if s["lambda"] == cfg.warp_guidance)
        assert wd["latent_first"] == by_row["Warped Diffusion"]["latent_first"]
        assert math.isclose(m["ratios"][table]["wd_over_gp_warping_latent"],
                            by_row["Warped Diffusion"]["latent_first"]["mean"]
                            / by_row["GP Warping"]["latent_first"]["mean"])
        # the controls: input (bicubic, and through the VAE), VAE ceiling, ground truth; the exact (Fourier) warp
        # makes the ground truth of T2's integer pans score 0 in pixels
        controls = {c["row"]: c for c in t["controls"]}
        assert list(controls) == list(stage.CONTROLS)
        assert all(_finite(c[k]) for c in controls.values() for k in stage.WE_KEYS + ("psnr", "hf_ratio"))
        gt = controls["Ground-truth reference"]
        assert gt["hf_ratio"]["mean"] == pytest.approx(1.0) and gt["psnr"]["mean"] > 60
        if table == "T2":
            assert gt["pixel_first"]["mean"] < 1e-8 and gt["pixel_prev"]["mean"] < 1e-8
        # paired differences: one entry per pair, the verdict follows the 2-SE rule
        assert [(p["a"], p["b"]) for p in t["paired"]] == stage.PAIRS
        for p in t["paired"]:
            for k in ("latent_first", "psnr"):
                d = p[k]
                assert d["verdict"] == ("not resolved" if abs(d["diff"]) <= 2 * d["sem"] else
                                        ("higher" if d["diff"] > 0 else "lower"))
    # the lambda sweep holds the paper-scaled lambda; the exact-warp guidance runs exist for the T3 pan
    assert stage.paper_scaled_lambda(cfg, (4, 16, 16)) == pytest.approx(cfg.warp_guidance / 8)
    exact = [r["run"] for r in m["tables"]["T3"]["exact_warp_guidance_pans"]]
    assert any(k.startswith("exact warp") for k in exact) and "no guidance (guided steps)" in exact
    assert m["gp_neighbour_correlation_truncated_kernel"] == pytest.approx(0.391, abs=1e-3)
    assert m["guidance_diagnosis"]["pan_step_latent_px"] == pytest.approx(0.35)
    assert m["guidance_diagnosis"]["bilinear_nyquist_gain_of_the_pan_step"] == pytest.approx(0.3)
    shares = m["guidance_diagnosis"]["high_share_last_frame_per_video"]
    assert all(0 <= v <= 1 for vs in shares.values() for v in vs)

    # resuming trains 0 extra steps: the histories come back from the checkpoints unchanged
    lat = stage.load_inputs(cfg, stage_device, tmp_path)
    with device_checks(stage_device):
        _, histories, seconds = stage.train_models(cfg, lat, tmp_path)
    assert seconds == m["train_seconds"]
    assert [len(histories["indep"]), len(histories["gp"])] == [cfg.warp_train_steps, cfg.warp_gp_finetune_steps]


def test_figure_helpers_and_high_share():
    cfg = stage.Config().replace(warp_rff_features=32, warp_hiwyn_factor=2)
    white, gp = stage.noise_samples(cfg, size=16)
    assert white.shape == gp.shape == (1, 1, 16, 16)
    frames = stage.warped_noise_frames(cfg, size=12, frames=3)
    assert list(frames) == ["resample", "bilinear", "hiwyn", "gp_warp"]
    assert all(v.shape == (3, 12, 12) and torch.isfinite(v).all() for v in frames.values())
    # a constant latent has no energy above half Nyquist, a checkerboard has all of it
    flat = torch.ones(2, 4, 8, 8)
    board = (torch.arange(8)[:, None] + torch.arange(8)[None]) % 2 * 2.0 - 1
    assert torch.allclose(stage.high_share(flat), torch.zeros(2))
    assert torch.allclose(stage.high_share(board.expand(3, 4, 8, 8)), torch.ones(3))


def test_config_checks_name_the_key(smoke_params):
    cfg = stage.Config.from_params(smoke_params)
    assert cfg.profile == "smoke" and cfg.warp_frame_size == 32 and cfg.warp_channels == (8, 16)
    for key, bad in (("warp_frames", 1), ("warp_frame_size", 30), ("warp_channels", [8]), ("warp_ema_decay", 1.0),
                     ("warp_bench_sizes", [[16, 16]]), ("warp_guidance_sweep", [-1.0]), ("warp_stat_draws", 1)):
        with pytest.raises(ConfigError, match=key):
            cfg.replace(**{key: bad})
    with pytest.raises(ConfigError, match="warp_lr"):
        stage.Config.from_params(smoke_params, warp_lr="fast")
    with pytest.raises(ConfigError, match="warp"):
        stage.Config.from_params({"base": smoke_params["base"]})
