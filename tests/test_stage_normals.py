"""The normals stage (afcore.stages.normals): a smoke run on every device, its paired differences and verdicts,
resume, config checks."""
from __future__ import annotations

import csv
import json
import math
from types import SimpleNamespace

import pytest
import torch

from afcore import normals as NM
from afcore.stages import latent_sr, normals
from afcore.stages.common import ConfigError


@pytest.fixture(scope="module")
def smoke_run(cached_stage_run):
    """One smoke run per device, shared by the tests of this module: (device, checks) -> (cfg, root, metrics)."""
    return lambda device, checks: cached_stage_run(normals, "checkpoints/normals", device, checks)


def test_run_outputs(stage_device, smoke_run, device_checks):
    cfg, root, m = smoke_run(stage_device, device_checks)
    assert json.loads((root / "metrics/60_normals.json").read_text())["scale"]["steps"] == cfg.normals_steps
    for f in ["figures/60_normals/pan_smooth.gif", "figures/60_normals/pan_sharp.gif",
              "checkpoints/normals/af_vae/final/prompt.pt", "checkpoints/normals/vanilla/last.pt"]:
        assert (root / f).stat().st_size > 0, f
    for name in normals.MODELS:
        for tex in normals.TEXTURES:
            acc = m["accuracy"][name][tex]
            assert 0 <= acc["mean"][0] <= 180 and 0 <= acc["under_30"][0] <= 100, (name, tex)
            assert acc["under_11.25"][0] <= acc["under_22.5"][0] <= acc["under_30"][0]
            assert 0 <= m["vae_ceiling"][name][tex]["mean"][0] < m["flat_baseline"][tex]["mean"][0] + 30
    rows = {(r["row"], r["albedo"]): r for r in m["shift"]}
    assert len(rows) == len(m["shift"]) == 5 * len(normals.TEXTURES)
    for tex in normals.TEXTURES:
        for name in normals.MODELS:
            r = rows[name, tex]
            assert all(math.isfinite(r[k][0]) for k in ("lat_spsnr", "img_spsnr", "flicker", "we"))
        # the exactly equivariant linear control sits at the precision's ceiling, far above the models
        control = rows[normals.CONTROL, tex]["lat_spsnr"][0]
        floor = 100 if latent_sr.matmul_precision(stage_device) == "float32" else 40
        assert control > floor and control > rows["AF-YOSO", tex]["lat_spsnr"][0] + 20
        assert rows[normals.CONTROL, tex]["lat_angle"][0] < 0.05  # degrees
    with open(root / "metrics/60_normals_shift.csv") as fh:
        curve = list(csv.DictReader(fh))
    assert len(curve) == len(rows) * cfg.normals_shift_steps
    assert {c["row"] for c in curve} == {r for r, _ in rows}
    sec = m["seconds"]
    assert all(sec["train"][n]["wall_s"] > 0 and sec["train"][n]["cpu_s"] > 0 for n in normals.MODELS)
    assert sec["stage_wall_s"] > sum(sec["train"][n]["wall_s"] for n in normals.MODELS) + sec["render"]["wall_s"]
    assert set(m["scales"]) == set(normals.MODELS)


def test_paired_differences_and_verdicts(stage_device, smoke_run, device_checks):
    """AF - standard, paired over the same test scenes: the mean difference is the difference of the means; the
    verdict names the better model only beyond two standard errors."""
    _, _, m = smoke_run(stage_device, device_checks)
    rows = {(r["row"], r["albedo"]): r for r in m["shift"]}
    assert len(m["af_minus_standard"]) == len(normals.TEXTURES) * len(normals.BETTER)
    for d in m["af_minus_standard"]:
        diff, se = d["af_minus_standard"]
        if d["metric"] == "mean":
            a, b = (m["accuracy"][n][d["albedo"]]["mean"][0] for n in ("AF-YOSO", "standard YOSO"))
        else:
            a, b = (rows[n, d["albedo"]][d["metric"]][0] for n in ("AF-YOSO", "standard YOSO"))
        assert diff == pytest.approx(a - b, abs=1e-9)
        if abs(diff) <= 2 * se:
            assert d["verdict"].startswith("not resolved")
        else:
            af_better = (diff < 0) == (normals.BETTER[d["metric"]] == "lower")
            assert d["verdict"] == ("AF-YOSO better" if af_better else "standard better")
    for v in m["accuracy_vs_references"]:
        if v["model"].endswith("VAE ceiling"):  # a VAE ceiling against the flat baseline
            name = next(n for n, key in normals.MODELS.items() if v["model"] == f"{key} VAE ceiling")
            assert v["diff_deg"][0] == pytest.approx(m["vae_ceiling"][name][v["albedo"]]["mean"][0] -
                                                     m["flat_baseline"][v["albedo"]]["mean"][0])
            continue
        ref = m["flat_baseline"][v["albedo"]] if v["reference"] == "flat normals" else \
            m["vae_ceiling"][v["model"]][v["albedo"]]
        assert v["diff_deg"][0] == pytest.approx(m["accuracy"][v["model"]][v["albedo"]]["mean"][0] - ref["mean"][0])


def test_resume_trains_no_extra_step(smoke_run, device_checks):
    """Same settings, finished checkpoint: train_model resumes at the last step and trains nothing (the latents
    are dummies here: a step run on them, or a fingerprint mismatch restarting the run, would change the history)."""
    cfg, root, m = smoke_run("cpu", device_checks)
    before = torch.load(root / "checkpoints/normals/af_vae/last.pt", weights_only=False)
    codecs = {name: SimpleNamespace(scale=m["scales"][name]) for name in normals.MODELS}
    dummy = torch.zeros(1, 4, 8, 8, device="cpu")
    latents = {name: {"cond": dummy, "target": dummy, "image": torch.zeros(1, 3, 32, 32, device="cpu")}
               for name in normals.MODELS}
    factor = cfg.normals_size // m["scale"]["latent"][1]
    _, hist, _ = normals.train_model(cfg, "AF-YOSO", latents, codecs, factor, "cpu", root)
    after = torch.load(root / "checkpoints/normals/af_vae/last.pt", weights_only=False)
    assert before["step"] == after["step"] == cfg.normals_steps
    assert hist == before["history"] == after["history"] and len(hist) == cfg.normals_steps


@pytest.mark.parametrize("key,value", [("normals_code", "rgbz"), ("normals_train_t", "late"),
                                       ("normals_stop_grad", "both"), ("normals_light_azimuth", [180.0, 90.0]),
                                       ("normals_channels", [8]), ("normals_p_zero", 1.5),
                                       ("normals_test_scenes", 1), ("normals_ema_decay", 0.0),
                                       ("normals_target", "delta"), ("normals_cond_init", "ones"),
                                       ("normals_decoded_weight", -1.0)])
def test_bad_config_names_the_key(smoke_params, key, value):
    with pytest.raises(ConfigError, match=key):
        normals.Config.from_params(smoke_params, **{key: value})


def test_relative_target_is_zero_for_flat_scenes_and_a_zero_output_decodes_to_flat(smoke_params):
    """normals_target: relative -- the x0 target is the normal latent minus the flat normal's latent, and predict adds
    that latent back: a model that outputs zeros predicts the flat normals (through a stand-in linear codec)."""
    cfg = normals.Config.from_params(smoke_params, normals_target="relative", normals_code="xy2")

    class PoolCodec:  # an affine stand-in for the VAE: 4x4 average pooling plus a bias (a zero image has a nonzero
        device, offset = torch.device("cpu"), torch.zeros(())  # latent, as with the real VAEs), and back

        def encode(self, x):
            return torch.nn.functional.avg_pool2d(torch.cat([x, x[:, :1]], 1), 4) + 0.5

        def decode(self, z):
            return torch.nn.functional.interpolate(z[:, :3] - 0.5, scale_factor=4)

    codec = PoolCodec()
    codec.offset = normals.flat_latent(cfg, codec)
    flat = torch.zeros(3, 3, cfg.normals_size, cfg.normals_size, device="cpu")
    flat[:, 2] = 1
    tilted = flat.clone()
    tilted[:, 0] = 0.3
    lat = normals.encode_training(cfg, {"m": codec}, {"train_img": flat, "train_nrm": torch.cat([flat, tilted])})
    assert torch.equal(lat["m"]["target"][:3], torch.zeros_like(lat["m"]["target"][:3]))
    assert lat["m"]["target"][3:].abs().max() > 0.1

    class Zero(torch.nn.Module):
        def forward(self, cond, sample=None, t=None):
            return torch.zeros_like(cond)

    pred = normals.predict(cfg, Zero(), codec, codec.encode(flat))
    assert NM.angular_error(pred, flat).max() < 1e-3


def test_frequency_split_is_exact_and_separates_smooth_from_nyquist_content():
    """decoder_sensitivity's split: low + high = z; a smooth cosine (1/8 cycle/px) is all low, the Nyquist
    checkerboard all high, and a random field's two parts are orthogonal (energies add)."""
    n = torch.arange(8, dtype=torch.float64, device="cpu")
    smooth = torch.cos(2 * math.pi * n / 8)[None, None, :, None] * torch.ones(1, 1, 1, 8, device="cpu",
                                                                               dtype=torch.float64)
    checker = ((-1.0) ** (n[:, None] + n[None, :]))[None, None]
    for z, part in ((smooth, 0), (checker, 1)):
        low, high = normals._split_frequencies(z)
        assert torch.allclose((low, high)[part], z, atol=1e-12) and (low, high)[1 - part].abs().max() < 1e-12
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator(device="cpu").manual_seed(0), device="cpu",
                    dtype=torch.float64)
    low, high = normals._split_frequencies(z)
    assert torch.allclose(low + high, z, atol=1e-12)
    assert float((low ** 2).sum() + (high ** 2).sum()) == pytest.approx(float((z ** 2).sum()), rel=1e-9)
