"""The ``latent_sr`` stage (notebooks/50_latent_sr.py): latent I2SB x4 super-resolution fine-tuned from the af_ldm
stage's U-Nets, LDM-I2SB (vanilla VAE latents) against AF-I2SB (AF-VAE latents, equivariance loss with CFA); SR
quality against floors and ceilings, the latent shift test with a positive control, flicker under integer image
shifts, paired differences.

Steps, in ``run``'s order: ``load_data`` -> ``load_models`` -> ``finetune_all`` -> ``sr_quality`` ->
``latent_shift_test`` -> ``image_shift_test`` -> ``check_controls`` -> ``differences`` -> ``summarise`` ->
``write_outputs``. Inputs: ``data/natural32.pt``, ``checkpoints/vae/{vanilla,af_vae}``,
``checkpoints/ldm/{ldm_vanilla_vae,af_ldm}/unet``; outputs: ``checkpoints/sr/``, ``metrics/50_latent_sr.json``,
``metrics/50_latent_sr_shift.csv`` and the README's figures under ``figures/50_latent_sr/``.

The positive control's pass mark depends on the arithmetic actually in use (``matmul_precision``,
``control_threshold_db``): float32 puts an exactly equivariant model near 150 dB, out of reach of TF32 matmuls
(CUDA's default here, see ``afcore.device_mod.pick_device``).
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from afcore import data, evaluation, i2sb, ldm, vae as VAE
from afcore.metrics import psnr
from afcore.signal import shift as crop_shift
from afcore.stages.common import (ConfigError, StageConfig, batch_sampler, make_generator, mean_sem, out_path,
                                  paired_mean_sem, pick_device, to01, verdict)
from afcore.train import WEIGHT_DECAY, prepare_run_dir, train_loop
from afcore.utils import save_csv, save_figure, save_gif, save_json, seed_everything

# model -> (VAE checkpoint, LDM U-Net checkpoint): LDM-I2SB from the standard LDM, AF-I2SB from AF-LDM
MODELS = {"LDM-I2SB": ("vanilla", "ldm_vanilla_vae"), "AF-I2SB": ("af_vae", "af_ldm")}
# shift-test rows: (row, model, CFA at inference)
ROWS = [("LDM-I2SB", "LDM-I2SB", False), ("LDM-I2SB + CFA", "LDM-I2SB", True), ("AF-I2SB + CFA", "AF-I2SB", True)]
CONTROL = "positive control"
# the input and ceiling rows of every table, one pair per VAE (model -> the VAE it works in)
VAE_NAMES = {"LDM-I2SB": "vanilla VAE", "AF-I2SB": "AF-VAE"}
DEGRADED, BICUBIC = "degraded input", "bicubic up x4"
# Matched-band image SPSNR: both runs low-passed by one Kaiser filter before comparing, at these cutoffs (units of the
# image Nyquist): 0.25 is the x4 input's own band (its latent carries nothing above it), 0.5 half the image band. A
# blurrier model cannot gain there by having less detail to get wrong.
MATCHED_CUTOFFS = (0.25, 0.5)
MATCHED_TAPS = 9


def matched_part(cutoff: float) -> str:
    """The shift-result key of the image SPSNR low-passed at ``cutoff``."""
    return f"image_lp{cutoff:g}"


SHIFT_PARTS = ("latent", "image") + tuple(matched_part(c) for c in MATCHED_CUTOFFS)


def identity_row(name: str) -> str:
    """The "do nothing" latent model of ``name``'s VAE: its degraded latent decoded unchanged."""
    return f"identity SR, {VAE_NAMES[name]}"


def ceiling_row(name: str) -> str:
    """``name``'s VAE reconstruction of the clean image: the best any model in that latent space can output."""
    return f"VAE ceiling, {VAE_NAMES[name]}"
DATASETS = ("natural32", "natural")


@dataclasses.dataclass(frozen=True)
class Config(StageConfig):
    SECTIONS = ("base", "sr")
    profile: str = "cpu"
    seed: int = 0
    device: str = "auto"
    sr_dataset: str = "natural32"
    sr_image_size: int = 32
    sr_train_images: int = 2000
    sr_betas: str = "symmetric"
    sr_ot_ode: bool = False
    sr_degradation: str = "bicubic_nearest"
    sr_steps: int = 300
    sr_batch: int = 32
    sr_lr: float = 0.0005
    sr_ema_decay: float = 0.99
    sr_eq_weight: float = 1.0
    sr_cfa_detach: bool = True
    sr_zero_out: bool = False
    sr_nfe: int = 10
    sr_eval_images: int = 64
    sr_fid_images: int = 400
    sr_shift_eighths: int = 16
    sr_image_shifts: int = 8

    def check(self) -> None:
        for key, allowed in (("sr_dataset", DATASETS), ("sr_betas", i2sb.BETAS),
                             ("sr_degradation", i2sb.DEGRADATIONS)):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"sr.{key} must be one of {list(allowed)}, got {getattr(self, key)!r}")
        if self.sr_image_size < 4 or self.sr_image_size % 4:
            raise ConfigError(f"sr.sr_image_size must be a positive multiple of 4, got {self.sr_image_size}")
        if self.sr_dataset == "natural32" and self.sr_image_size != 32:
            raise ConfigError(f"sr.sr_image_size must be 32 for sr_dataset='natural32', got {self.sr_image_size}")
        for key in ("sr_train_images", "sr_batch", "sr_eval_images", "sr_shift_eighths", "sr_image_shifts"):
            if getattr(self, key) < 1:
                raise ConfigError(f"sr.{key} must be >= 1, got {getattr(self, key)}")
        if self.sr_fid_images < 2:
            raise ConfigError(f"sr.sr_fid_images must be >= 2 (FID and KID need two images), got {self.sr_fid_images}")
        if self.sr_steps < 0:
            raise ConfigError(f"sr.sr_steps must be >= 0, got {self.sr_steps}")
        if not 1 <= self.sr_nfe <= 999:
            raise ConfigError(f"sr.sr_nfe must be in [1, 999] (the bridge has 1000 indices), got {self.sr_nfe}")
        if not self.sr_lr > 0:
            raise ConfigError(f"sr.sr_lr must be > 0, got {self.sr_lr}")
        if not 0 < self.sr_ema_decay < 1:
            raise ConfigError(f"sr.sr_ema_decay must be in (0, 1), got {self.sr_ema_decay}")
        if self.sr_eq_weight < 0:
            raise ConfigError(f"sr.sr_eq_weight must be >= 0, got {self.sr_eq_weight}")
        for key in ("sr_cfa_detach", "sr_zero_out", "sr_ot_ode"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"sr.{key} must be true or false, got {getattr(self, key)!r}")


# ------------------------------------------------------------------ the positive control's pass mark, in one place
# An exactly equivariant model scores, in both shift protocols, at a ceiling set by the arithmetic's rounding: with
# unit roundoff u, errors of u relative to the signal cost about 20 log10(1/u) dB (float32, u = 2^-24: 144.5 dB;
# the control measures 148-150 dB, its error dominated by the FFT shifts). On CUDA the control's matmul runs as TF32
# (10-bit mantissa, u = 2^-11: 66.2 dB) unless that is switched off; the sampler scales the network's error by
# sigma_f, so TF32-sized errors cost less (simulated on the CPU in tests/test_stage_latent_sr.py: about 90 dB), but
# the float32 ceiling is out of reach. The control passes within CONTROL_MARGIN_DB of 20 log10(1/u): room for errors
# ten times the unit roundoff; a protocol that forgets to shift the sampler's noises scores under 30 dB.
UNIT_ROUNDOFF = {"float64": 2.0 ** -53, "float32": 2.0 ** -24, "tf32": 2.0 ** -11, "float16": 2.0 ** -11,
                 "bfloat16": 2.0 ** -8}
CONTROL_MARGIN_DB = 20.0


def matmul_precision(device, dtype: torch.dtype = torch.float32) -> str:
    """The arithmetic of the matmuls and convolutions a ``dtype`` model runs on ``device``: the dtype itself, except
    float32 on CUDA, which runs as TF32 when ``torch.backends.cuda.matmul.allow_tf32`` / ``cudnn.allow_tf32`` are
    set (``pick_device`` sets them) and as bfloat16 under ``torch.set_float32_matmul_precision("medium")``."""
    name = str(dtype).removeprefix("torch.")
    if name not in UNIT_ROUNDOFF:
        raise ValueError(f"matmul_precision: unsupported dtype {dtype}")
    if name != "float32" or torch.device(device).type != "cuda":
        return name
    if torch.get_float32_matmul_precision() == "medium":
        return "bfloat16"
    if torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "float32"


def control_threshold_db(precision: str) -> float:
    """The positive control's pass mark for ``precision`` (a key of ``UNIT_ROUNDOFF``): 20 log10(1/u) -
    CONTROL_MARGIN_DB, i.e. 124.5 dB for float32 and 46.2 dB for TF32."""
    if precision not in UNIT_ROUNDOFF:
        raise ValueError(f"precision must be one of {list(UNIT_ROUNDOFF)}, got {precision!r}")
    return 20 * math.log10(1 / UNIT_ROUNDOFF[precision]) - CONTROL_MARGIN_DB


def check_controls(values_db: dict, precision: str) -> float:
    """Stop the stage when the positive control misses its ceiling: ``values_db`` maps a protocol name to its
    SPSNR values (dB, any shape); every value must reach ``control_threshold_db(precision)``. Returns the mark."""
    mark = control_threshold_db(precision)
    for protocol, v in values_db.items():
        low = float(torch.as_tensor(v).min())
        if not low >= mark:  # NaN fails too
            raise AssertionError(f"positive control below the ceiling in the {protocol} protocol: {low:.1f} dB < "
                                 f"{mark:.1f} dB (the pass mark for {precision} arithmetic): the shift protocol, not "
                                 "the models, is broken")
    return mark


# --------------------------------------------------------------------------------------------------------- inputs
class Codec:
    """A VAE with the latent scale 1 / std of the training latents' posterior means (as the video stage)."""

    def __init__(self, vae, train_hr: torch.Tensor):
        self.vae = vae
        self.scale = float(1 / ldm.encode_latents(vae, train_hr).std())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return ldm.encode_latents(self.vae, x) * self.scale

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.vae.decode(z[i:i + 256] / self.scale).sample for i in range(0, len(z), 256)])


def load_data(cfg: Config, device, root) -> dict:
    """HR crops on ``device``: ``train`` (the first ``sr_train_images``), ``test``, ``eval`` (the first
    ``sr_eval_images`` test crops), and the random-CNN ``features`` for FID (calibrated on all training crops)."""
    dev = torch.device(device)
    if cfg.sr_dataset == "natural32":
        prepared = data.load_prepared("natural32", root=str(Path(root) / "data"))
    else:
        prepared = data.split(data.random_crops(5000, cfg.sr_image_size, seed=cfg.seed + 3), None,
                              test_fraction=0.2, seed=cfg.seed)
    train_hr, test_hr = prepared["train"][:cfg.sr_train_images].to(dev), prepared["test"].to(dev)
    features = evaluation.random_features(3, seed=cfg.seed, calibrate=prepared["train"])
    return {"train": train_hr, "test": test_hr, "eval": test_hr[:cfg.sr_eval_images], "features": features}


def load_models(cfg: Config, device, root, train_hr: torch.Tensor) -> dict:
    """Per model: its ``codec`` (VAE + scale), base ``unet`` (the af_ldm stage's), and the training latents ``x0``
    (HR) and ``x1`` (degraded); plus ``factor`` (the AF-VAE's down-sampling factor) and the bridge ``sched``."""
    from diffusers import AutoencoderKL, UNet2DModel

    from afcore.surgery import load_alias_free

    dev, root = torch.device(device), Path(root)
    out = {}
    for name, (vae_key, unet_key) in MODELS.items():
        codec = Codec(load_alias_free(AutoencoderKL, root / "checkpoints/vae" / vae_key).eval().to(dev), train_hr)
        unet = load_alias_free(UNet2DModel, root / "checkpoints/ldm" / unet_key / "unet").to(dev)
        out[name] = {"codec": codec, "unet": unet}
    for name in MODELS:
        codec = out[name]["codec"]
        out[name]["x0"] = codec.encode(train_hr)
        out[name]["x1"] = codec.encode(i2sb.degrade_sr4(train_hr, cfg.sr_degradation))
    out["factor"] = VAE.factor(out["AF-I2SB"]["codec"].vae)
    out["sched"] = i2sb.bridge_schedule(cfg.sr_betas, device=dev)
    return out


# ------------------------------------------------------------------------------------------------------- training
def zero_output_layer(unet) -> None:
    """Zero the U-Net's last convolution (weights and bias), in place. The net then outputs 0, so x0_hat = x_n and
    the OT-ODE sampler returns its input unchanged: fine-tuning starts at the identity SR instead of at an
    unconditional noise predictor whose outputs mean nothing to the bridge. The rest of the U-Net keeps the af_ldm
    stage's weights; gradients reach it as soon as the last layer moves off zero (ControlNet's zero convolution)."""
    with torch.no_grad():
        unet.conv_out.weight.zero_()
        if unet.conv_out.bias is not None:
            unet.conv_out.bias.zero_()


def finetune(cfg: Config, name: str, models: dict, device, root):
    """Fine-tune ``name``'s U-Net (AdamW, EMA, clip 1, resumable under ``checkpoints/sr/<unet>``); AF-I2SB with the
    equivariance loss (weight ``sr_eq_weight``, CFA). Returns (the EMA model in eval mode, loss history)."""
    dev, m = torch.device(device), models[name]
    eq = cfg.sr_eq_weight if name == "AF-I2SB" else 0.0
    fp = dict(model=MODELS[name], steps=cfg.sr_steps, batch=cfg.sr_batch, lr=cfg.sr_lr, ema=cfg.sr_ema_decay, eq=eq,
              betas=cfg.sr_betas, ot_ode=cfg.sr_ot_ode, degradation=cfg.sr_degradation, dataset=cfg.sr_dataset,
              size=cfg.sr_image_size, train_images=cfg.sr_train_images, seed=cfg.seed,
              scale=round(m["codec"].scale, 6), cfa_detach=cfg.sr_cfa_detach, weight_decay=WEIGHT_DECAY,
              zero_out=cfg.sr_zero_out)
    run_dir = prepare_run_dir(Path(root) / "checkpoints/sr" / MODELS[name][1], fp)
    if cfg.sr_zero_out:
        zero_output_layer(m["unet"])
    get_batch = batch_sampler(m["x0"], m["x1"], batch_size=cfg.sr_batch, seed=cfg.seed, device=dev)
    sched = models["sched"]

    def loss_fn(model, batch, step):
        x0, x1, s = batch
        return i2sb.i2sb_loss(model, x0, x1, sched, make_generator(int(s) + 1, dev), ot_ode=cfg.sr_ot_ode,
                              eq_weight=eq, cfa=True, cfa_detach=cfg.sr_cfa_detach)

    model, ema, hist = train_loop(m["unet"], loss_fn, get_batch, steps=cfg.sr_steps, lr=cfg.sr_lr, ckpt_dir=run_dir,
                                  ckpt_every=max(1, cfg.sr_steps // 4), ema_decay=cfg.sr_ema_decay,
                                  weight_decay=WEIGHT_DECAY, device=str(dev),
                                  desc=name, log_csv=run_dir / "loss.csv")
    return (ema or model).to(dev).eval(), hist


def finetune_all(cfg: Config, models: dict, device, root) -> dict:
    """Fine-tune both models in turn (replacing ``models[name]["unet"]``); returns their histories and
    ``train_seconds`` (the sum of the steps' wall-clock seconds)."""
    histories, seconds = {}, {}
    for name in MODELS:
        models[name]["unet"], histories[name] = finetune(cfg, name, models, device, root)
        seconds[name] = sum(r["seconds"] for r in histories[name])
    return {"histories": histories, "train_seconds": seconds}


# ------------------------------------------------------------------------------------------------------- quality
def super_resolve(cfg: Config, models: dict, name: str, x1: torch.Tensor, generator) -> torch.Tensor:
    """Decoded SR images in [-1, 1] of the (scaled) degraded latents ``x1``, in chunks of 256."""
    unet, sched = models[name]["unet"], models["sched"]
    out = torch.cat([i2sb.sample(unet, x1[i:i + 256], sched, cfg.sr_nfe, cfg.sr_ot_ode, generator=generator)[0]
                     for i in range(0, len(x1), 256)])
    return models[name]["codec"].decode(out).clamp(-1, 1)


def sr_quality(cfg: Config, data_: dict, models: dict, device) -> dict:
    """SR of the first ``sr_fid_images`` test crops by both models beside the input rows (the degraded input, the
    bicubic up-sampling of the bicubic LR image, and per VAE the identity SR = the degraded latent decoded
    unchanged) and each VAE's ceiling (its reconstruction of HR). Returns ``hr``, ``outputs`` (name -> images),
    ``rows`` (name -> PSNR and SSIM mean +- s.e. over the first ``sr_eval_images``, FID against all test crops,
    per-image PSNR) and ``fid_name``."""
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim_fn

    dev = torch.device(device)
    gen_q = make_generator(cfg.seed + 11, dev)
    fid_hr = data_["test"][:cfg.sr_fid_images]
    lr_fid = i2sb.degrade_sr4(fid_hr, cfg.sr_degradation)
    bicubic = F.interpolate(F.interpolate(fid_hr, scale_factor=0.25, mode="bicubic", antialias=True), scale_factor=4,
                            mode="bicubic").clamp(-1, 1)
    outputs = {DEGRADED: lr_fid.clamp(-1, 1), BICUBIC: bicubic}
    for name in MODELS:
        codec = models[name]["codec"]
        x1 = codec.encode(lr_fid)
        outputs[ceiling_row(name)] = codec.decode(codec.encode(fid_hr)).clamp(-1, 1)
        outputs[identity_row(name)] = codec.decode(x1).clamp(-1, 1)
        outputs[name] = super_resolve(cfg, models, name, x1, gen_q)
    rows, fid_name = {}, None
    hr = fid_hr[:cfg.sr_eval_images]
    for key, y in outputs.items():
        p = psnr(y[:cfg.sr_eval_images], hr, peak=2.0, per_sample=True)
        s = ssim_fn(y[:cfg.sr_eval_images], hr, data_range=2.0, reduction="none")
        fid = evaluation.quality_metrics(data_["test"], y, data_["features"], tag=cfg.sr_dataset, device=dev)
        fid_name = next(k for k in fid if k.startswith("FID["))
        rows[key] = {"psnr_db": mean_sem(p.cpu()), "ssim": mean_sem(s.cpu()), fid_name: fid[fid_name],
                     "psnr_per_image": p.cpu()}
    return {"hr": fid_hr, "outputs": outputs, "rows": rows, "fid_name": fid_name}


# ---------------------------------------------------------------------------------------------- shift protocols
def latent_sweep(cfg: Config) -> list:
    """The latent shifts (0, k/8), k = 1..sr_shift_eighths."""
    return [(0.0, k / 8) for k in range(1, cfg.sr_shift_eighths + 1)]


def latent_shift_test(cfg: Config, data_: dict, models: dict, device) -> dict:
    """``i2sb.sr_shift_consistency`` for each row of ``ROWS`` on the degraded eval crops (noises from seed + 21);
    per VAE the identity SR (``i2sb.ZeroNet`` through the OT-ODE sampler: the degraded latent decoded unchanged)
    and the ceiling (the same on the clean latent); then the positive control (``i2sb.PointwiseLinear``, identity
    codec, factor 1). All under the same protocol."""
    dev = torch.device(device)
    sweep, sched = latent_sweep(cfg), models["sched"]
    eval_lr = i2sb.degrade_sr4(data_["eval"], cfg.sr_degradation)
    res = {}
    for row, name, cfa in ROWS:
        codec = models[name]["codec"]
        res[row] = i2sb.sr_shift_consistency(models[name]["unet"], codec.encode(eval_lr), sched, sweep, cfg.sr_nfe,
                                             cfg.sr_ot_ode, cfa=cfa, decode=lambda z, c=codec: c.decode(z).clamp(-1, 1),
                                             factor=models["factor"], generator=make_generator(cfg.seed + 21, dev))
    for name in MODELS:  # what the input and the VAE give with no SR network: the controls for blur and the VAE
        codec = models[name]["codec"]
        for row, x1 in ((identity_row(name), codec.encode(eval_lr)), (ceiling_row(name), codec.encode(data_["eval"]))):
            res[row] = i2sb.sr_shift_consistency(i2sb.ZeroNet(), x1, sched, sweep, 1, True, cfa=False,
                                                 decode=lambda z, c=codec: c.decode(z).clamp(-1, 1),
                                                 factor=models["factor"])
    for r in res.values():  # every model, identity and ceiling row (the control's 8 px images are too small to filter)
        for c in MATCHED_CUTOFFS:
            r[matched_part(c)] = i2sb.matched_band_spsnr(r, sweep, c, factor=models["factor"], numtaps=MATCHED_TAPS)
    control = i2sb.PointwiseLinear(3, seed=cfg.seed).to(dev)
    res[CONTROL] = i2sb.sr_shift_consistency(control, eval_lr, sched, sweep, cfg.sr_nfe, cfg.sr_ot_ode, cfa=False,
                                             decode=lambda z: z, factor=1,
                                             generator=make_generator(cfg.seed + 21, dev))
    return res


def summarise_shift(per: torch.Tensor, sweep: list) -> dict:
    """per: [shift, image] SPSNR in dB -> mean +- s.e.m. over images, spread over k, min over k +- s.e.m., and the
    bounce (whole-pixel minus fractional shifts, per image)."""
    per = per.double().cpu()
    curve = per.mean(1)
    kmin = int(curve.argmin())
    whole = [j for j, d in enumerate(sweep) if float(d[1]).is_integer()]
    frac = [j for j in range(len(sweep)) if j not in whole]
    bounce = paired_mean_sem(per[whole].mean(0), per[frac].mean(0)) if whole and frac else None
    return {"mean": mean_sem(per.mean(0)), "spread_over_k": float(curve.std()) if len(curve) > 1 else 0.0,
            "min_over_k": mean_sem(per[kmin]), "argmin_k_eighths": kmin + 1, "whole_minus_fractional_db": bounce}


def summarise_shift_rows(shift_res: dict, sweep: list) -> dict:
    """row -> part (``SHIFT_PARTS`` the row has) -> ``summarise_shift``: the "shift" section of the metrics."""
    return {row: {part: summarise_shift(r[part], sweep) for part in SHIFT_PARTS if part in r}
            for row, r in shift_res.items()}


def matched_band_markdown(shift_rows: dict) -> str:
    """Image SPSNR per row, raw and at each matched cutoff: mean +- s.e.m. over images."""
    parts = SHIFT_PARTS[1:]  # "image" and its matched-band versions
    head = "| row | image SPSNR, raw | " + " | ".join(f"low-passed at {c:g} Nyquist" for c in MATCHED_CUTOFFS) + " |"
    lines = [head, "|---" * (len(parts) + 1) + "|"]
    for row, r in shift_rows.items():
        if all(p in r for p in parts):
            lines.append(f"| {row} | " + " | ".join(f"{r[p]['mean'][0]:.2f} ± {r[p]['mean'][1]:.2f}" for p in parts)
                         + " |")
    return "\n".join(lines)


def shift_curve_rows(shift_res: dict, sweep: list) -> list:
    """The per-shift curve (mean over images) of every row: the rows of ``metrics/50_latent_sr_shift.csv``."""
    rows = []
    for row, r in shift_res.items():
        lat, img = r["latent"].double().cpu().mean(1), r["image"].double().cpu().mean(1)
        for k in range(len(sweep)):
            rows.append({"row": row, "shift_eighths": k + 1, "latent_spsnr_db": float(lat[k]),
                         "image_spsnr_db": float(img[k])})
    return rows


def image_deltas(cfg: Config) -> list:
    """The integer image shifts (0, delta), delta = 1..sr_image_shifts."""
    return [(0, dl) for dl in range(1, cfg.sr_image_shifts + 1)]


def image_shift_test(cfg: Config, data_: dict, models: dict, device) -> dict:
    """``i2sb.image_shift_consistency`` for each row (noises from seed + 31), per VAE the identity SR (``ZeroNet``,
    OT-ODE), then the positive control with the ideal degradation (which commutes with integer rolls)."""
    dev = torch.device(device)
    deltas, sched, hr = image_deltas(cfg), models["sched"], data_["eval"]
    res = {}
    for row, name, cfa in ROWS:
        codec = models[name]["codec"]
        res[row] = i2sb.image_shift_consistency(
            models[name]["unet"], hr, sched, deltas, codec.encode, lambda z, c=codec: c.decode(z).clamp(-1, 1),
            cfg.sr_degradation, cfg.sr_nfe, cfg.sr_ot_ode, cfa=cfa, factor=models["factor"],
            generator=make_generator(cfg.seed + 31, dev))
    for name in MODELS:
        codec = models[name]["codec"]
        res[identity_row(name)] = i2sb.image_shift_consistency(
            i2sb.ZeroNet(), hr, sched, deltas, codec.encode, lambda z, c=codec: c.decode(z).clamp(-1, 1),
            cfg.sr_degradation, 1, True, cfa=False, factor=models["factor"])
    control = i2sb.PointwiseLinear(3, seed=cfg.seed).to(dev)
    res[CONTROL] = i2sb.image_shift_consistency(
        control, hr, sched, deltas, lambda x: x, lambda z: z, "ideal", cfg.sr_nfe, cfg.sr_ot_ode, cfa=False,
        factor=1, generator=make_generator(cfg.seed + 31, dev))
    return res


def flicker_rows(image_res: dict, deltas: list) -> dict:
    """Per row: image-protocol SPSNR (all shifts, and shifts that are multiples of 4), flicker (std over delta of
    the PSNR against HR, per image), mean +- s.e.m. over images."""
    out = {}
    mult4 = [j for j, dl in enumerate(deltas) if dl[1] % 4 == 0]
    for row, r in image_res.items():
        per = r["spsnr"].double().cpu()
        out[row] = {"image_protocol_spsnr": mean_sem(per.mean(0)),
                    "image_protocol_spsnr_mult4": mean_sem(per[mult4].mean(0)) if mult4 else None,
                    "flicker_db": mean_sem(r["psnr_hr"].double().cpu().std(0)) if len(deltas) > 1 else None}
    return out


def control_values(shift_res: dict, image_res: dict) -> dict:
    """The positive control's SPSNR values in both protocols (what ``check_controls`` judges)."""
    return {"latent shift": shift_res[CONTROL]["latent"], "image shift": image_res[CONTROL]["spsnr"]}


# ---------------------------------------------------------------------------------------------------- comparison
def differences(shift_res: dict, quality_rows: dict) -> dict:
    """Paired differences per image (each image's SPSNR averaged over the shifts first), mean +- s.e.m.:

    - AF-I2SB + CFA minus LDM-I2SB + CFA (latent and image SPSNR, SR PSNR): the raw comparison;
    - the same for the two identity SR rows and the two ceilings: how much of it the input and the VAEs give alone;
    - AF-I2SB + CFA minus LDM-I2SB + CFA *beyond their identity SR*: per image (AF model - AF identity) - (LDM model
      - vanilla identity), the part the SR networks add (blur of the input and the VAEs' own equivariance cancel);
    - each model minus its identity SR and minus bicubic (SR PSNR): does the model beat its input;
    - LDM-I2SB + CFA minus LDM-I2SB: what CFA alone does."""
    def per_image(row, part):
        return shift_res[row][part].double().mean(0).cpu()

    def shift_pair(a, b):
        return {f"{part}_spsnr": paired_mean_sem(per_image(a, part), per_image(b, part)) for part in SHIFT_PARTS}

    def psnr_pair(a, b):
        return paired_mean_sem(quality_rows[a]["psnr_per_image"], quality_rows[b]["psnr_per_image"])

    af, ldm_cfa, plain = "AF-I2SB + CFA", "LDM-I2SB + CFA", "LDM-I2SB"
    id_af, id_v = identity_row("AF-I2SB"), identity_row("LDM-I2SB")
    ceil_af, ceil_v = ceiling_row("AF-I2SB"), ceiling_row("LDM-I2SB")
    out = {
        f"{af} minus {ldm_cfa}": {**shift_pair(af, ldm_cfa), "sr_psnr": psnr_pair("AF-I2SB", "LDM-I2SB")},
        f"{id_af} minus {id_v}": {**shift_pair(id_af, id_v), "sr_psnr": psnr_pair(id_af, id_v)},
        f"{ceil_af} minus {ceil_v}": {**shift_pair(ceil_af, ceil_v), "sr_psnr": psnr_pair(ceil_af, ceil_v)},
        f"{af} minus {ldm_cfa}, beyond their identity SR": {
            f"{part}_spsnr": paired_mean_sem(per_image(af, part) - per_image(id_af, part),
                                             per_image(ldm_cfa, part) - per_image(id_v, part))
            for part in SHIFT_PARTS},
    }
    for name, row in (("LDM-I2SB", ldm_cfa), ("AF-I2SB", af)):
        out[f"{name} minus its identity SR"] = {**shift_pair(row, identity_row(name)),
                                                "sr_psnr": psnr_pair(name, identity_row(name))}
        out[f"{name} minus {BICUBIC}"] = {"sr_psnr": psnr_pair(name, BICUBIC)}
    out[f"{ldm_cfa} minus {plain}"] = shift_pair(ldm_cfa, plain)
    return out


def difference_lines(diffs: dict) -> list:
    """One readable line per comparison: each metric's difference and its verdict (beyond 2 s.e. or not)."""
    def word(m, se):
        v = verdict(m, se)
        return f"{m:+.2f} ± {se:.2f} dB: " + ("not resolved" if v == "not resolved" else f"resolved, {v}")

    return [f"{k}: " + ", ".join(f"{m} {word(*v)}" for m, v in d.items()) for k, d in diffs.items()]


def summarise(cfg: Config, models: dict, quality: dict, shift_rows: dict, flicker: dict, diffs: dict,
              train_seconds: dict, cpu_seconds: float) -> dict:
    """The metrics dict of ``metrics/50_latent_sr.json``."""
    fid_name = quality["fid_name"]
    return {
        "profile": cfg.profile,
        "scale": {"dataset": cfg.sr_dataset, "image_size": cfg.sr_image_size,
                  "latent": list(models["AF-I2SB"]["x0"].shape[1:]), "steps": cfg.sr_steps, "batch": cfg.sr_batch,
                  "lr": cfg.sr_lr, "nfe": cfg.sr_nfe, "betas": cfg.sr_betas, "ot_ode": cfg.sr_ot_ode,
                  "degradation": cfg.sr_degradation, "eval_images": cfg.sr_eval_images,
                  "fid_images": cfg.sr_fid_images, "shift_eighths": cfg.sr_shift_eighths,
                  "image_shifts": cfg.sr_image_shifts},
        "conventions": "images in [-1, 1]; PSNR peak 2, per image; identity SR = the degraded latent decoded "
                       "unchanged (a latent model that does nothing), VAE ceiling = the VAE's reconstruction of HR, "
                       "both also put through the shift protocols (identity: both protocols; ceiling: latent "
                       "protocol); SSIM Gaussian 11 / 1.5, data range 2 "
                       f"(torchmetrics); {fid_name}: random-CNN features calibrated on the training crops (not "
                       "Inception); latent SPSNR peak = the target's per-sample dynamic range on the valid mask; "
                       "shifts: cropped Fourier shifts of the input latent by k/8 latent px (image shift f*k/8), "
                       "stochastic noises shifted circularly; image protocol: circular integer rolls of HR before "
                       "degradation, compared on the non-wrapped region; mean ± s.e.m. over images (each averaged "
                       "over shifts); matched band (image_lp<c>): the image SPSNR after one 9-tap Kaiser low-pass at cutoff c "
                       "(units of the image Nyquist) on both sides, valid mask eroded by 4 px; no paper numbers exist",
        "quality": {k: {m: v for m, v in q.items() if m != "psnr_per_image"} for k, q in quality["rows"].items()},
        "shift": shift_rows,
        "image_protocol": flicker,
        "differences": {k: {m: {"diff_db": v[0], "sem_db": v[1], "resolved": verdict(*v) != "not resolved"}
                            for m, v in d.items()} for k, d in diffs.items()},
        "train_seconds": train_seconds,
        "stage_cpu_seconds": cpu_seconds,
    }


def table_markdown(summary: dict) -> str:
    """The stage's table from the metrics dict: per VAE its ceiling, its identity SR and its model(s), then the
    image-space inputs and the positive control; every column mean +- s.e.m. over the evaluation images."""
    q, sh, ip = summary["quality"], summary["shift"], summary["image_protocol"]
    fid = next(k for k in q[BICUBIC] if k.startswith("FID["))

    def pm(v, fmt=".2f"):
        return f"{v[0]:{fmt}} ± {v[1]:{fmt}}" if v else "–"

    lines = [f"| row | SR PSNR (dB) | SSIM | {fid} | latent SPSNR (dB) | image SPSNR (dB) | image SPSNR, min over k | "
             "bounce: whole - fractional k (dB) | image-protocol SPSNR (dB) | flicker (dB) |", "|---" * 10 + "|"]
    order = []
    for name in MODELS:
        order += [(ceiling_row(name), ceiling_row(name)), (identity_row(name), identity_row(name))]
        order += [(row, model) for row, model, _ in ROWS if model == name]
    order += [(DEGRADED, DEGRADED), (BICUBIC, BICUBIC), (CONTROL, None)]
    for row, qkey in order:
        qq = q.get(qkey) if qkey else None
        s_, i_ = sh.get(row), ip.get(row)
        cells = [pm(qq["psnr_db"]) if qq else "–", f"{qq['ssim'][0]:.3f}" if qq else "–",
                 f"{qq[fid]:.1f}" if qq else "–"]
        if s_:
            cells += [pm(s_["latent"]["mean"]), pm(s_["image"]["mean"]),
                      f"{s_['image']['min_over_k'][0]:.2f} (k={s_['image']['argmin_k_eighths']})",
                      pm(s_["image"]["whole_minus_fractional_db"])]
        else:
            cells += ["–"] * 4
        cells += [pm(i_["image_protocol_spsnr"]), pm(i_["flicker_db"])] if i_ else ["–"] * 2
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- figures the README shows
def figure_spsnr_vs_shift(shift_res: dict, sweep: list):
    """Latent and image SPSNR (mean +- s.e.m. over images) against the shift, one line per model row."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    for ax, part in zip(axes, ("latent", "image")):
        for row, r in shift_res.items():
            if row == CONTROL:
                continue
            per = r[part].double().cpu()
            m, se = per.mean(1).numpy(), (per.std(1) / per.shape[1] ** 0.5).numpy()
            control = row not in [name for name, _, _ in ROWS]  # identity SR and ceilings: dashed, no markers
            ax.errorbar([d[1] for d in sweep], m, yerr=se, label=row, capsize=2, marker=None if control else ".",
                        linestyle="--" if control else "-", lw=0.8 if control else 1.2)
        ax.set_xlabel("horizontal shift (latent pixels)")
        ax.set_ylabel(f"{part} SPSNR (dB)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def shift_test_frames(shift_res: dict, eval_lr: torch.Tensor, sweep: list, factor: int) -> list:
    """The reference's shift-test GIF: one frame per shift k/8 (k = 0..K), one row per model: input (degraded image
    shifted by f d) | output | shifted reference | |difference| x 4 on the valid region; the second eval crop."""
    frames, i = [], min(1, len(eval_lr) - 1)  # the second test crop (the first is nearly black)
    for k in range(len(sweep) + 1):
        rows_img = []
        for row, _, _ in ROWS:
            r = shift_res[row]
            d = (0.0, 0.0) if k == 0 else (sweep[k - 1][0] * factor, sweep[k - 1][1] * factor)
            inp, _ = crop_shift(eval_lr[i:i + 1].clamp(-1, 1), d, mode="crop")
            ref, mask = crop_shift(r["reference"][i:i + 1], d, mode="crop")
            out = r["reference"][i:i + 1] if k == 0 else r["frames"][k - 1, i:i + 1] * mask
            diff = ((out - ref).abs() * 4 - 1).clamp(-1, 1)
            rows_img.append(np.concatenate([np.pad(to01(t[0]), ((1, 1), (1, 1), (0, 0)), constant_values=1)
                                            for t in (inp, out, ref, diff)], 1))
        frames.append(np.kron(np.concatenate(rows_img, 0), np.ones((3, 3, 1))))
    return frames


def write_outputs(out_dir, summary: dict, curve_rows: list, shift_res: dict, eval_lr: torch.Tensor, sweep: list,
                  factor: int) -> dict:
    """``metrics/50_latent_sr.json``, ``metrics/50_latent_sr_shift.csv`` and the README's figures
    ``figures/50_latent_sr/{spsnr_vs_shift.png, shift_test.gif}``; returns ``summary``."""
    import matplotlib.pyplot as plt

    save_json(summary, out_path(out_dir, "metrics/50_latent_sr.json"))
    save_csv(curve_rows, out_path(out_dir, "metrics/50_latent_sr_shift.csv"))
    fig = figure_spsnr_vs_shift(shift_res, sweep)
    save_figure(fig, out_path(out_dir, "figures/50_latent_sr/spsnr_vs_shift.png"))
    plt.close(fig)
    save_gif(shift_test_frames(shift_res, eval_lr, sweep, factor),
             out_path(out_dir, "figures/50_latent_sr/shift_test.gif"), fps=4)
    return summary


# ------------------------------------------------------------------------------------------------------------ run
def run(cfg: Config, device: str = "auto", out_dir=".") -> dict:
    """The whole stage: inputs from ``out_dir/data``, ``out_dir/checkpoints``; writes the stage's outputs under
    ``out_dir``; returns the metrics dict."""
    seed_everything(cfg.seed)
    dev = pick_device(device, cfg.deterministic)
    cpu0 = time.process_time()
    data_ = load_data(cfg, dev, out_dir)
    models = load_models(cfg, dev, out_dir, data_["train"])
    trained = finetune_all(cfg, models, dev, out_dir)
    quality = sr_quality(cfg, data_, models, dev)
    sweep = latent_sweep(cfg)
    shift_res = latent_shift_test(cfg, data_, models, dev)
    shift_rows = summarise_shift_rows(shift_res, sweep)
    image_res = image_shift_test(cfg, data_, models, dev)
    flicker = flicker_rows(image_res, image_deltas(cfg))
    diffs = differences(shift_res, quality["rows"])
    check_controls(control_values(shift_res, image_res), matmul_precision(dev))
    summary = summarise(cfg, models, quality, shift_rows, flicker, diffs, trained["train_seconds"],
                        time.process_time() - cpu0)
    eval_lr = i2sb.degrade_sr4(data_["eval"], cfg.sr_degradation)
    return write_outputs(out_dir, summary, shift_curve_rows(shift_res, sweep), shift_res, eval_lr, sweep,
                         models["factor"])
