"""The latent_sr stage (afcore.stages.latent_sr): a smoke run on every device, resume, config checks, and the
positive control's precision-dependent pass mark (TF32 simulated on the CPU)."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from afcore import data, i2sb
from afcore.stages import latent_sr
from afcore.stages.common import ConfigError
from afcore.device import make_generator


@pytest.fixture(scope="module")
def smoke_run(cached_stage_run):
    """One smoke run per device, shared by the tests of this module: (device, checks) -> (cfg, root, metrics)."""
    return lambda device, checks: cached_stage_run(latent_sr, "checkpoints/sr", device, checks)


def test_run_outputs(stage_device, smoke_run, device_checks):
    cfg, root, m = smoke_run(stage_device, device_checks)
    on_disk = json.loads((root / "metrics/50_latent_sr.json").read_text())
    assert on_disk["scale"]["steps"] == cfg.sr_steps and on_disk["profile"] == cfg.profile
    for f in ("metrics/50_latent_sr_shift.csv", "figures/50_latent_sr/spsnr_vs_shift.png",
              "figures/50_latent_sr/shift_test.gif", "checkpoints/sr/af_ldm/last.pt",
              "checkpoints/sr/ldm_vanilla_vae/last.pt"):
        assert (root / f).stat().st_size > 0, f
    identities = [latent_sr.identity_row(n) for n in latent_sr.MODELS]
    ceilings = [latent_sr.ceiling_row(n) for n in latent_sr.MODELS]
    rows = [r for r, _, _ in latent_sr.ROWS] + identities + ceilings + [latent_sr.CONTROL]
    assert set(m["shift"]) == set(rows) and set(m["image_protocol"]) == set(rows) - set(ceilings)
    # every table has the input rows (image space and, per VAE, the identity SR) and each VAE's ceiling
    assert set(m["quality"]) == {latent_sr.DEGRADED, latent_sr.BICUBIC, *identities, *ceilings, *latent_sr.MODELS}
    table = latent_sr.table_markdown(m)
    assert all(f"| {row} |" in table for row in rows + [latent_sr.DEGRADED, latent_sr.BICUBIC])
    csv = (root / "metrics/50_latent_sr_shift.csv").read_text().splitlines()
    assert csv[0] == "row,shift_eighths,latent_spsnr_db,image_spsnr_db"
    assert len(csv) == 1 + len(rows) * cfg.sr_shift_eighths
    for name, q in m["quality"].items():
        fid = next(k for k in q if k.startswith("FID["))
        assert 5 < q["psnr_db"][0] < 60 and -1 <= q["ssim"][0] <= 1, name
        assert q["psnr_db"][1] >= 0 and math.isfinite(q[fid]) and q[fid] >= -1e-6, name
    for row in rows:
        for part in ("latent", "image"):
            s = m["shift"][row][part]
            assert all(math.isfinite(v) for v in s["mean"]) and 1 <= s["argmin_k_eighths"] <= cfg.sr_shift_eighths
            assert s["min_over_k"][0] <= s["mean"][0] + 1e-9
    # the positive control sits at the precision's ceiling; the models far below it
    mark = latent_sr.control_threshold_db(latent_sr.matmul_precision(stage_device))
    assert m["shift"][latent_sr.CONTROL]["image"]["min_over_k"][0] >= mark
    assert m["image_protocol"][latent_sr.CONTROL]["image_protocol_spsnr"][0] >= mark
    assert m["shift"]["AF-I2SB + CFA"]["image"]["mean"][0] < mark
    assert m["train_seconds"]["AF-I2SB"] > 0 and m["stage_cpu_seconds"] > 0


def test_paired_differences(stage_device, smoke_run, device_checks):
    """A paired difference's mean is the difference of the two rows' means (same images, same shifts), and
    'resolved' means beyond two standard errors."""
    _, _, m = smoke_run(stage_device, device_checks)
    q, s = m["quality"], m["shift"]
    d = m["differences"]["AF-I2SB + CFA minus LDM-I2SB + CFA"]
    assert d["sr_psnr"]["diff_db"] == pytest.approx(q["AF-I2SB"]["psnr_db"][0] - q["LDM-I2SB"]["psnr_db"][0])
    for part in ("latent", "image"):
        assert d[f"{part}_spsnr"]["diff_db"] == pytest.approx(
            s["AF-I2SB + CFA"][part]["mean"][0] - s["LDM-I2SB + CFA"][part]["mean"][0])
    # the controlled comparison is the raw one minus the identity rows' own difference (paired, same images)
    dd = m["differences"]["AF-I2SB + CFA minus LDM-I2SB + CFA, beyond their identity SR"]
    ident = m["differences"][f"{latent_sr.identity_row('AF-I2SB')} minus {latent_sr.identity_row('LDM-I2SB')}"]
    for part in ("latent", "image"):
        assert dd[f"{part}_spsnr"]["diff_db"] == pytest.approx(
            d[f"{part}_spsnr"]["diff_db"] - ident[f"{part}_spsnr"]["diff_db"])
    for name in latent_sr.MODELS:
        v = m["differences"][f"{name} minus its identity SR"]["sr_psnr"]["diff_db"]
        assert v == pytest.approx(q[name]["psnr_db"][0] - q[latent_sr.identity_row(name)]["psnr_db"][0])
    for comp in m["differences"].values():
        for v in comp.values():
            assert v["resolved"] == (abs(v["diff_db"]) > 2 * v["sem_db"])


def test_resume_trains_no_extra_step(smoke_run, device_checks):
    cfg, root, m = smoke_run("cpu", device_checks)
    data_ = latent_sr.load_data(cfg, "cpu", root)
    models = latent_sr.load_models(cfg, "cpu", root, data_["train"])
    _, hist = latent_sr.finetune(cfg, "AF-I2SB", models, "cpu", root)
    assert len(hist) == cfg.sr_steps
    assert sum(r["seconds"] for r in hist) == m["train_seconds"]["AF-I2SB"]  # the stored history, not a new one
    assert torch.load(root / "checkpoints/sr/af_ldm/last.pt", weights_only=False)["step"] == cfg.sr_steps


@pytest.mark.parametrize("key,value", [("sr_betas", "cosine"), ("sr_degradation", "box"), ("sr_nfe", 1000),
                                       ("sr_image_size", 30), ("sr_dataset", "mnist"), ("sr_ema_decay", 1.0),
                                       ("sr_fid_images", 1), ("sr_steps", -1), ("sr_zero_out", "yes"),
                                       ("sr_ot_ode", 1)])
def test_bad_config_names_the_key(smoke_params, key, value):
    with pytest.raises(ConfigError, match=key):
        latent_sr.Config.from_params(smoke_params, **{key: value})


def test_identity_control_is_the_decoded_degraded_latent(smoke_run, device_checks):
    """The identity rows: ZeroNet through the OT-ODE sampler returns the degraded latent unchanged, so its image
    SPSNR is the decoder's own: PSNR(dec(T_d x1), T_fd dec(x1)), computed here directly."""
    from afcore import metrics
    from afcore.signal import fourier_shift, valid_mask

    cfg, root, m = smoke_run("cpu", device_checks)
    data_ = latent_sr.load_data(cfg, "cpu", root)
    models = latent_sr.load_models(cfg, "cpu", root, data_["train"])
    codec = models["AF-I2SB"]["codec"]
    x1 = codec.encode(i2sb.degrade_sr4(data_["eval"], cfg.sr_degradation))
    f, d = models["factor"], (0.0, 0.5)
    out, _ = i2sb.sample(i2sb.ZeroNet(), x1, models["sched"], cfg.sr_nfe, ot_ode=True)
    torch.testing.assert_close(out, x1, rtol=0, atol=1e-6)
    dec = lambda z: codec.decode(z).clamp(-1, 1)  # noqa: E731
    di = (0.0, d[1] * f)
    direct = metrics.psnr(dec(fourier_shift(x1, d) * valid_mask(x1.shape[-2:], d)), fourier_shift(dec(x1), di),
                          valid_mask(data_["eval"].shape[-2:], di), peak=2.0, per_sample=True)
    r = i2sb.sr_shift_consistency(i2sb.ZeroNet(), x1, models["sched"], [d], 1, True, cfa=False, decode=dec,
                                  factor=f)
    torch.testing.assert_close(r["image"][0], direct, rtol=0, atol=1e-4)


def test_zero_output_layer_starts_at_the_identity_sr():
    """sr_zero_out: after zeroing the last convolution the OT-ODE sampler returns x1 (the identity SR)."""
    from afcore import ldm

    torch.manual_seed(0)
    unet = ldm.latent_unet((8, 16), latent_channels=4, sample_size=8, groups=4)
    x1 = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    sched = i2sb.bridge_schedule()
    moved, _ = i2sb.sample(unet, x1, sched, 4, ot_ode=True)
    assert float((moved - x1).abs().max()) > 1e-3
    latent_sr.zero_output_layer(unet)
    out, _ = i2sb.sample(unet, x1, sched, 4, ot_ode=True)
    torch.testing.assert_close(out, x1, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------ the control's pass mark
def _round_tf32(x: torch.Tensor) -> torch.Tensor:
    """float32 -> the nearest value with TF32's 10-bit mantissa (how tensor cores read float32 operands)."""
    i = x.contiguous().view(torch.int32)
    return ((i + 0x1000) & -0x2000).view(torch.float32)


class TF32Operands(i2sb.PointwiseLinear):
    """The control with its matmul's operands rounded to TF32 (accumulation in float32, as on tensor cores)."""

    def forward(self, x, t):
        scale = 1 + t.to(x.dtype).view(-1, 1, 1, 1) / 1000
        return SimpleNamespace(sample=scale * torch.einsum("oc,bchw->bohw", _round_tf32(self.weight),
                                                           _round_tf32(x)))


class TF32Noise(i2sb.PointwiseLinear):
    """The control with a fresh relative error of TF32's unit roundoff (2^-11 ~ 5e-4) on every output value of
    every call: a pessimistic model of TF32 (independent errors, never cancelling)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.g = torch.Generator(device="cpu").manual_seed(5)

    def forward(self, x, t):
        out = super().forward(x, t).sample
        return SimpleNamespace(sample=out * (1 + 2.0 ** -11 * torch.randn(out.shape, generator=self.g, device="cpu")))


@pytest.fixture(scope="module")
def control_inputs():
    hr = data.random_crops(3, 32, seed=0)  # the embedded photographs: no data stage needed
    return hr, i2sb.bridge_schedule("symmetric")


def _control_values(model, hr, sched, nfe=10):
    """The stage's two protocols on ``model`` as the stage runs its control (identity codec, factor 1)."""
    sweep = [(0.0, 1 / 8), (0.0, 3 / 8)]
    lat = i2sb.sr_shift_consistency(model, i2sb.degrade_sr4(hr), sched, sweep, nfe, False, cfa=False,
                                    decode=lambda z: z, factor=1, generator=make_generator(21))
    img = i2sb.image_shift_consistency(model, hr, sched, [(0, 1)], lambda x: x, lambda z: z, "ideal", nfe,
                                       False, cfa=False, factor=1, generator=make_generator(31))
    return latent_sr.control_values({latent_sr.CONTROL: lat}, {latent_sr.CONTROL: img})


def test_thresholds_follow_the_unit_roundoff():
    f32, tf32 = latent_sr.control_threshold_db("float32"), latent_sr.control_threshold_db("tf32")
    assert f32 == pytest.approx(20 * math.log10(2 ** 24) - latent_sr.CONTROL_MARGIN_DB)
    assert f32 - tf32 == pytest.approx(20 * math.log10(2 ** 13))  # 13 mantissa bits fewer: 78.3 dB lower
    assert tf32 > 40  # still far above a broken protocol
    with pytest.raises(ValueError, match="precision"):
        latent_sr.control_threshold_db("int8")


def test_matmul_precision_reads_the_backend_flags():
    assert latent_sr.matmul_precision("cpu") == "float32"
    assert latent_sr.matmul_precision("cpu", torch.bfloat16) == "bfloat16"
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.get_float32_matmul_precision())
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        assert latent_sr.matmul_precision("cuda") == "tf32"
        assert latent_sr.matmul_precision("cuda", torch.float64) == "float64"
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        assert latent_sr.matmul_precision("cuda:0") == "float32"
        torch.set_float32_matmul_precision("medium")
        assert latent_sr.matmul_precision("cuda") == "bfloat16"
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
        torch.set_float32_matmul_precision(saved[2])


def test_control_passes_in_float32(control_inputs):
    values = _control_values(i2sb.PointwiseLinear(3, seed=0), *control_inputs)
    assert latent_sr.check_controls(values, "float32") == latent_sr.control_threshold_db("float32")


@pytest.mark.parametrize("control", [TF32Operands, TF32Noise])
def test_tf32_control_passes_the_tf32_mark_only(control_inputs, control):
    """Under TF32-sized errors the control stays far above the TF32 mark, but below float32's: a fixed float32
    threshold would stop the stage on a GPU, the precision-dependent one does not."""
    values = _control_values(control(3, seed=0), *control_inputs)
    low = min(float(v.min()) for v in values.values())
    assert latent_sr.control_threshold_db("tf32") + 20 < low < latent_sr.control_threshold_db("float32")
    latent_sr.check_controls(values, "tf32")
    with pytest.raises(AssertionError, match="float32"):
        latent_sr.check_controls(values, "float32")


def test_broken_control_fails_every_mark(control_inputs, monkeypatch):
    """A genuinely broken protocol: the shifted runs reuse the unshifted run's noises without shifting them."""
    monkeypatch.setattr(i2sb, "_shift_noises", lambda noises, d: noises)
    values = _control_values(i2sb.PointwiseLinear(3, seed=0), *control_inputs)
    assert max(float(v.min()) for v in values.values()) < 35
    for precision in ("tf32", "bfloat16", "float32"):
        with pytest.raises(AssertionError, match="positive control below the ceiling"):
            latent_sr.check_controls(values, precision)
    with pytest.raises(AssertionError):  # a control at 30 dB, or NaN, fails too
        latent_sr.check_controls({"latent shift": torch.full((2, 4), 30.0)}, "tf32")
    with pytest.raises(AssertionError):
        latent_sr.check_controls({"latent shift": torch.tensor([float("nan")])}, "tf32")
