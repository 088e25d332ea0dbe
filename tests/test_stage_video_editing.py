"""The video_editing stage (afcore.stages.video_editing) on the smoke config: outputs, metric properties, resume and
config errors."""
from __future__ import annotations

import json
import math
import shutil

import pytest

from afcore.stages import video_editing as VE
from afcore.stages.common import ConfigError

UPSTREAM = ("af_ldm",)


def _finite_pairs(d):
    for v in d:
        assert isinstance(v, (list, tuple)) and len(v) == 2 and all(math.isfinite(x) for x in v), d


def test_run_writes_outputs_and_metrics_hold(stage_device, device_checks, smoke_workspace, smoke_params):
    root = smoke_workspace(*UPSTREAM)
    shutil.rmtree(root / "checkpoints/video", ignore_errors=True)  # this stage's own: fine-tuning really runs
    cfg = VE.Config.from_params(smoke_params)
    with device_checks(stage_device):
        out = VE.run(cfg, stage_device, root)

    on_disk = json.loads((root / "metrics/41_video_editing.json").read_text())
    assert on_disk["profile"] == "smoke" and set(on_disk) == set(out)
    rows = {r["row"]: r for r in out["table6"]}
    assert list(rows) == [r[0] for r in VE.ROWS]
    for r in rows.values():
        _finite_pairs([r["we_nb"], r["we_nb_01"], r["we_first"], r["we_nb_latent"], r["edit_psnr_db"]])
        assert r["we_nb"][0] >= 0 and r["we_first"][0] >= 0 and r["sec_per_frame"] > 0
        # the [0, 1] column is the [-1, 1] one over 4, mean and standard error alike
        assert r["we_nb_01"][0] == pytest.approx(r["we_nb"][0] / 4, rel=1e-6)
        assert r["we_nb_01"][1] == pytest.approx(r["we_nb"][1] / 4, rel=1e-6, abs=1e-12)
        assert 0 < r["edit_psnr_db"][0] < 80
    assert out["ratio_af_over_standard_with_cfa"] == pytest.approx(
        rows["AF-LDM + CFA"]["we_nb"][0] / rows["standard LDM + CFA"]["we_nb"][0])
    # the true edit is a pointwise map of exactly warped frames: its error is interpolation only, a VAE adds to it
    assert set(out["floor"]) == {"ground truth edit"} | {f"{m} VAE reconstruction of the true edit" for m in VE.MODELS}
    for v in out["floor"].values():
        _finite_pairs([v["we_nb"], v["we_first"]])
    # the positive control: circular padding makes the whole pipeline exactly shift-equivariant
    pc = out["positive_control_we_nb"]
    assert pc["circular padding"] < 1e-8 < pc["zero padding"]
    assert len(out["interpolation"]) == 2 * len(VE.MODELS)
    for r in out["interpolation"]:
        _finite_pairs([r["psnr_intermediate_db"], r["smoothness_we"], r["flicker_db"]])
    assert set(out["text_path"]["we_nb"]) == {"CFA on", "CFA off"}
    assert all(math.isfinite(x) and x >= 0 for x in out["text_path"]["we_nb"].values())
    clip = out["user_clip"]
    assert clip["frames"] == cfg.video_frames and clip["demo_exact_flow"]["flow_epe_px"] < 2.0
    assert (root / "figures/41_video_editing/demo_clip.gif").exists()

    # row names hold commas and afcore.utils.save_csv does not quote them yet: split the 4 numeric columns off the right
    lines = (root / "metrics/41_video_editing_we.csv").read_text().splitlines()
    assert lines[0] == "row,we_nb,we_nb_sem,we_first,edit_psnr_db"
    table = [line.rsplit(",", 4) for line in lines[1:]]
    assert [t[0].strip('"') for t in table] == list(rows)
    assert all(float(t[1]) == pytest.approx(rows[t[0].strip('"')]["we_nb"][0]) for t in table)
    for name in VE.MODELS:
        run_dir = root / "checkpoints/video" / VE.MODELS[name][1]
        assert (run_dir / "last.pt").exists() and (run_dir / "fingerprint.json").exists()
    assert set(out["train_seconds"]) == set(VE.MODELS)


def test_resume_trains_no_extra_steps(smoke_workspace, smoke_params):
    root = smoke_workspace(*UPSTREAM)
    cfg = VE.Config.from_params(smoke_params)
    models, images = VE.load_inputs(cfg, "cpu", root)
    first, _ = VE.finetune_all(cfg, models, images, root)
    models, images = VE.load_inputs(cfg, "cpu", root)
    again, _ = VE.finetune_all(cfg, models, images, root)
    for name in VE.MODELS:
        assert len(first[name]) == cfg.video_finetune_steps
        assert again[name] == first[name]  # the saved history (seconds included): nothing was trained again


@pytest.mark.parametrize("key, value", [("video_strength", 0.0), ("video_frames", 2), ("video_frame_size", 30),
                                        ("video_ema_decay", 1.0), ("video_label_dropout", 1.5),
                                        ("video_sd_prompts", ["only one"]), ("video_batch", 0)])
def test_bad_config_names_the_key(smoke_params, key, value):
    with pytest.raises(ConfigError, match=key):
        VE.Config.from_params(smoke_params, **{key: value})


def test_missing_clip_names_the_parameter(smoke_params, tmp_path):
    for outside in ("no/such/clip.mp4", "/tmp/clip.mp4", "clips/../data/mnist.pt", "clips"):
        with pytest.raises(ConfigError, match="video_clip.*inside clips/"):
            VE.Config.from_params(smoke_params, video_clip=outside)
    cfg = VE.Config.from_params(smoke_params, video_clip="clips/no_such_clip.mp4")
    with pytest.raises(ConfigError, match="video_clip"):
        VE.user_clip(cfg, None, None, tmp_path)


def test_the_clips_folder_is_a_declared_dependency_of_the_stage():
    """A user's clip must be something DVC watches: replacing it has to re-run the stage, not report old numbers."""
    import yaml

    from afcore.utils import REPO_ROOT

    stage = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]["video_editing"]
    assert VE.CLIPS in stage["deps"] and (REPO_ROOT / VE.CLIPS).is_dir()
