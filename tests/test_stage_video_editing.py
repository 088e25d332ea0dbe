"""The video_editing stage (afcore.stages.video_editing) on the smoke config: outputs, metric properties, resume and
config errors."""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from afcore import editing as ED
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
    for r in rows.values():
        _finite_pairs([r["hf_ratio"]])
    # controls: the input (raw and through each VAE), each VAE's ceiling, the ground-truth reference (the true edit)
    controls = {r["row"]: r for r in out["controls"]}
    assert list(controls) == (["input video (unedited)"]
                              + [f"{m} VAE {k}" for m in VE.MODELS for k in ("input video", "ceiling: true edit")]
                              + [VE.GROUND_TRUTH])
    gt = controls[VE.GROUND_TRUTH]
    assert gt["edit_psnr_db"] is None and gt["hf_ratio"] == (pytest.approx(1.0), 0.0)
    # the true edit is a pointwise map of exactly warped frames; on the whole-pixel pan (video 0) the metric's
    # bilinear warp is exact too, so its warping error there is float rounding
    assert VE.KINDS[0][0] == "pan" and gt["per_video"]["we_nb"][0] < 1e-8
    for r in controls.values():
        _finite_pairs([r["we_nb"], r["we_first"], r["hf_ratio"]])
    # paired differences: every contrast and metric, resolved exactly when |diff| > 2 s.e.
    # (the ground-truth reference has no PSNR against itself: those contrasts carry WE and HF ratio only)
    n_gt = sum(b == VE.GROUND_TRUTH for _, b in VE.CONTRASTS)
    assert len(out["differences"]) == len(VE.CONTRASTS) * len(VE.CONTRAST_METRICS) - n_gt
    for d in out["differences"]:
        assert math.isfinite(d["diff"]) and math.isfinite(d["sem"])
        assert d["resolved"] == (abs(d["diff"]) > 2 * d["sem"])
    # the positive control: circular padding makes the whole pipeline exactly shift-equivariant
    pc = out["positive_control_we_nb"]
    assert pc["circular padding"] < 1e-8 < pc["zero padding"]
    interp = {r["row"]: r for r in out["interpolation"]["rows"]}
    assert len(interp) == 1 + len(VE.MODELS) * (1 + len(VE.INTERP_LABELS))
    assert sorted(r["variant"] for r in interp.values() if r["variant"]) == sorted(list(VE.INTERP_LABELS) * 2)
    for name, r in interp.items():
        _finite_pairs([r["smoothness_we"], r["hf_ratio"]])
        if name.startswith("ground truth"):  # PSNR against itself: no PSNR, no flicker
            assert r["psnr_intermediate_db"] is None and r["flicker_db"] is None and r["hf_ratio"][0] == 1.0
        else:
            _finite_pairs([r["psnr_intermediate_db"], r["flicker_db"]])
    assert len(out["interpolation"]["differences"]) == 12
    assert set(out["text_path"]["we_nb"]) == {"CFA on", "CFA off"}
    assert all(math.isfinite(x) and x >= 0 for x in out["text_path"]["we_nb"].values())
    clip = out["user_clip"]
    assert clip["frames"] == cfg.video_frames and clip["demo_exact_flow"]["flow_epe_px"] < 2.0
    assert (root / "figures/41_video_editing/demo_clip.gif").exists()

    # row names hold commas and afcore.utils.save_csv does not quote them yet: split the 4 numeric columns off the right
    lines = (root / "metrics/41_video_editing_we.csv").read_text().splitlines()
    assert lines[0] == "row,we_nb,we_nb_sem,we_first,edit_psnr_db,hf_ratio"
    table = [line.rsplit(",", 5) for line in lines[1:]]
    assert [t[0].strip('"') for t in table] == list(rows) + list(controls)
    every = {**rows, **controls}
    assert all(float(t[1]) == pytest.approx(every[t[0].strip('"')]["we_nb"][0]) for t in table)
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


# ------------------------------------------------------------------------ interpolation: the released variant
def _random_latents(seed, p=2):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(p, 4, 8, 8, generator=g) for _ in range(3))


def _pan_flow(p, dy, dx, size=32):
    fl = torch.zeros(p, 2, size, size)
    fl[:, 0], fl[:, 1] = dy, dx
    return fl


def test_released_interpolation_starts_from_a_splatted_forward():
    """The released script's intermediate start latents are frame a's inverted latent splatted by alpha F_ab; frame
    b's latent enters only as the last frame (alpha = 1). At alpha = 0 that is a's latent exactly; on a whole-pixel
    pan by a multiple of the VAE factor the splat is an exact shift of a's latent (the vacated column is the hole
    fill). A b-anchored splat fails both."""
    inv_a, inv_b, _ = _random_latents(0)
    fill = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(9))
    f_ab, f_ba = _pan_flow(2, 0.0, 8.0), _pan_flow(2, 0.0, -8.0)  # 8 px = 2 latent px to the right over the gap
    alphas = [0.0, 0.5, 0.75, 1.0]
    z = ED.interpolation_latents(inv_a, inv_b, f_ab, f_ba, alphas, 4, fill, variant="released")
    assert z.shape == (2, 4, 4, 8, 8)
    torch.testing.assert_close(z[:, 0], inv_a, atol=1e-5, rtol=0)
    torch.testing.assert_close(z[:, 1, ..., 1:], inv_a[..., :-1], atol=1e-5, rtol=0)  # alpha 1/2: 1 latent px
    torch.testing.assert_close(z[:, 1, ..., 0], fill[..., ::4, 0], atol=0, rtol=0)  # the hole: the shared fill
    torch.testing.assert_close(z[:, 3], inv_b, atol=0, rtol=0)  # the last frame: b's inverted latent, as released
    # b's latent does not enter the intermediate frames: another b gives the same start latents there
    z_other_b = ED.interpolation_latents(inv_a, inv_b + 1, f_ab, f_ba, alphas, 4, fill, variant="released")
    torch.testing.assert_close(z_other_b[:, :3], z[:, :3], atol=0, rtol=0)
    # the paper's variant: slerp of both splats, so it equals a at alpha 0 and b at alpha 1, and depends on b
    zp = ED.interpolation_latents(inv_a, inv_b, f_ab, f_ba, [0.0, 1.0], 4, fill, variant="paper")
    torch.testing.assert_close(zp[:, 0], inv_a, atol=1e-5, rtol=0)
    torch.testing.assert_close(zp[:, 1], inv_b, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="variant"):
        ED.interpolation_latents(inv_a, inv_b, f_ab, f_ba, [0.5], 4, fill, variant="b")


def test_released_interpolation_takes_attention_from_a():
    """Released: every frame's cross-frame attention reads image a's stored pass, so at alpha = 0 (start latent =
    a's inverted latent) the output is exactly a's own DDIM reconstruction without any cross-frame attention."""
    from afcore.ldm import latent_unet

    assert ED.attention_weights([0.0, 0.25, 1.0], "released").tolist() == [[1.0, 0.0]] * 3
    assert ED.attention_weights([0.0, 0.25, 1.0], "paper").tolist() == [[1.0, 0.0], [0.75, 0.25], [0.0, 1.0]]
    torch.manual_seed(4)
    unet = ED.class_conditional(latent_unet((16, 32), latent_channels=4, sample_size=8, groups=8).eval(), 3).eval()
    za, zb, _ = _random_latents(1)
    f_ab = _pan_flow(2, 4.0, 0.0)
    out = ED.interpolate(unet, za, zb, f_ab, -f_ab, [0.0, 0.5], steps=4, factor=4,
                         generator=torch.Generator().manual_seed(0), variant="released")
    ts, lab = ED.edit_timesteps(4, 1.0), torch.zeros(2, dtype=torch.long)
    plain_a = ED.ddim_generate(unet, ED.ddim_invert(unet, za, ts, lab), ts, lab, steps=4)
    torch.testing.assert_close(out[:, 0], plain_a, atol=1e-4, rtol=0)
    plain_b = ED.ddim_generate(unet, ED.ddim_invert(unet, zb, ts, lab), ts, lab, steps=4)
    assert (out[:, 0] - plain_b).abs().max() > 0.1


# ------------------------------------------------------------------------------- metrics on constructed inputs
def _pan_video(blur: bool):
    """A whole-pixel pan of a random texture (1, 5, 3, 32, 32), optionally box-blurred, with its exact flows."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(3)
    big = torch.rand(1, 3, 48, 48, generator=g) * 2 - 1
    if blur:
        big = F.avg_pool2d(F.pad(big, (1, 1, 1, 1), mode="reflect"), 3, stride=1)
    frames = torch.stack([big[..., 8:40, 8 + j:40 + j] for j in range(5)], 1)  # content moves 1 px left per frame
    back = torch.zeros(4, 1, 2, 32, 32)
    back[:, :, 1] = 1.0  # frame j+1's pixel p came from frame j at p + 1
    return frames, back


def test_warping_error_rewards_blur_and_the_hf_ratio_catches_it():
    sharp, back = _pan_video(False)
    blurred, _ = _pan_video(True)
    assert VE.we_nb(sharp, back).item() < 1e-10  # whole-pixel pan: the bilinear warp is exact
    # misregistered by half a pixel, the blurred video's error is far lower than the sharp one's
    half = back.clone()
    half[:, :, 1] = 1.5
    assert VE.we_nb(blurred, half).item() < 0.5 * VE.we_nb(sharp, half).item()
    assert VE.hf_ratio(sharp, sharp).item() == pytest.approx(1.0)
    assert VE.hf_ratio(blurred, sharp).item() < 0.2


def test_paired_differences_on_constructed_values():
    rows = {"a": {"per_video": {"m": [1.0, 2.0, 3.0, 4.0]}}, "b": {"per_video": {"m": [0.0, 1.5, 2.0, 4.5]}}}
    (d,) = VE.paired_differences(rows, [("a", "b")], ["m"])
    diffs = torch.tensor([1.0, 0.5, 1.0, -0.5], dtype=torch.float64)
    assert d["diff"] == pytest.approx(0.5) and d["sem"] == pytest.approx(float(diffs.std() / 2))
    assert d["resolved"] is False  # 0.5 < 2 * 0.354
    rows["b"]["per_video"]["m"] = [0.0, 1.1, 2.0, 3.1]  # differences 1, 0.9, 1, 0.9: resolved
    assert VE.paired_differences(rows, [("a", "b")], ["m"])[0]["resolved"] is True
    assert VE.paired_differences(rows, [("a", "b")], ["m", "absent"])[0]["key"] == "a minus b, m"
