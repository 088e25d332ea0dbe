"""Stage ``af_vae`` (notebook 20_af_vae): AF-LDM's Table 2 at small scale, with Figures 2 and 6 (VAE part).

A vanilla VAE is pre-trained (or SD's VAE loaded through ``vae_pretrained``), every row of ``ROWS`` starts from its
weights, gets its surgery (ideal sampling, filtered nonlinearity) and is fine-tuned (with the equivariance loss where
the row says so). Then, per image: reconstruction PSNR and Enc / Dec SPSNR, rFID with a bootstrap standard error,
paired differences between rows, the decoder SPSNR against the latent shift, decoded LFW faces under a sub-pixel pan,
and the encode / decode / train-step cost.

Training seeds (``vae_seeds``, ``afcore.stages.seeds``): the pre-trained VAE is trained once (base seed), the stand-in
for a released model that every fine-tuning starts from; every row's fine-tuning (and the random-weights row) is
repeated per training seed, evaluated on the same test crops, shifts and rFID features, and each comparison is
summarised over seeds (``seed_level``). The base seed's models make the figures, the timings and the checkpoints
downstream stages read (``checkpoints/vae/...``); another seed's AF-VAE and vanilla VAE go to
``checkpoints/vae/seed<seed>/...`` for the af_ldm stage's seeds.

Steps, in the order ``run`` calls them (the notebook calls the same ones): ``load_inputs`` -> ``train_rows`` ->
``save_checkpoints`` -> ``loss_table`` -> ``evaluate`` -> ``compare`` -> ``latent_spectra`` / ``dec_spsnr_curve`` ->
``faces_pan`` -> ``codec_timing`` -> ``replicate`` -> ``seed_level`` -> ``summarise`` -> ``write_outputs``. Outputs under ``out_dir``:
``checkpoints/vae/{vanilla,af_vae,runs/...}``, ``metrics/20_af_vae.json``, ``metrics/20_af_vae_loss.csv``,
``metrics/20_af_vae_spsnr.csv`` and ``figures/20_af_vae/{loss,spectrum_and_spsnr,faces_pan}.png``.
"""
from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from afcore import data, evaluation, metrics, signal, vae as V, vae_gan as G
from afcore.backend import code_path
from afcore.stages.common import (ConfigError, StageConfig, Timer, make_generator, mean_sem, out_path,
                                  paired_mean_sem, pick_device, verdict)
from afcore.stages.seeds import MULTIPLE_COMPARISONS, contrast_markdown, contrast_table, seed_path, seed_summary, training_seeds
from afcore.surgery import make_alias_free, save_alias_free
from afcore.train import prepare_run_dir, train_loop
from afcore.utils import save_csv, save_figure, save_json, seed_everything

ROWS = {  # name: (ideal sampling, filtered nonlinearity, equivariance loss, fine-tuned)
    "vanilla VAE (pre-trained)": (False, False, False, False),
    "vanilla VAE (fine-tuned)": (False, False, False, True),
    "+ ideal sampling": (True, False, False, True),
    "+ filtered nonlinearity": (True, True, False, True),
    "+ equivariance loss (AF-VAE)": (True, True, True, True),
    "vanilla + equivariance loss": (False, False, True, True),
    "AF-VAE, random weights": (True, True, False, False),
}
# Zhou et al., Table 2 (SD-VAE on ImageNet 256 px; rFID with Inception features): recon PSNR, rFID, Enc, Dec SPSNR.
# Its two "SD VAE" rows are the released VAE and the VAE retrained like the other rows.
PAPER = {"vanilla VAE (pre-trained)": (26.94, 0.69, 25.07, 22.31),
         "vanilla VAE (fine-tuned)": (26.45, 0.63, 19.71, 21.36),
         "+ ideal sampling": (25.76, 1.01, 21.51, 21.75), "+ filtered nonlinearity": (25.42, 0.86, 29.49, 24.61),
         "+ equivariance loss (AF-VAE)": (25.53, 1.00, 45.10, 33.88),
         "vanilla + equivariance loss": (24.59, 4.18, 41.46, 30.74),
         "AF-VAE, random weights": (None, None, 29.43, 29.02)}
KEY = {"vanilla VAE (pre-trained)": "vanilla_pretrained", "vanilla VAE (fine-tuned)": "vanilla_finetuned",
       "+ ideal sampling": "ideal_sampling", "+ filtered nonlinearity": "filtered_nonlinearity",
       "+ equivariance loss (AF-VAE)": "af_vae", "vanilla + equivariance loss": "vanilla_eq_loss",
       "AF-VAE, random weights": "af_vae_random"}  # stable keys for metrics/20_af_vae.json
COMPARISONS = {  # key: (row, baseline); each value = row minus baseline, paired over the same images
    "ideal_sampling_minus_vanilla_finetuned": ("+ ideal sampling", "vanilla VAE (fine-tuned)"),
    "filtered_nonlinearity_minus_ideal_sampling": ("+ filtered nonlinearity", "+ ideal sampling"),
    "af_vae_minus_filtered_nonlinearity": ("+ equivariance loss (AF-VAE)", "+ filtered nonlinearity"),
    "af_vae_minus_vanilla_pretrained": ("+ equivariance loss (AF-VAE)", "vanilla VAE (pre-trained)"),
    "af_vae_minus_vanilla_finetuned": ("+ equivariance loss (AF-VAE)", "vanilla VAE (fine-tuned)"),
    "vanilla_eq_loss_minus_af_vae": ("vanilla + equivariance loss", "+ equivariance loss (AF-VAE)"),
    "vanilla_finetuned_minus_vanilla_pretrained": ("vanilla VAE (fine-tuned)", "vanilla VAE (pre-trained)"),
}
# pre-registered primary contrasts (Holm family): the AF-VAE against the vanilla VAE fine-tuned alike
PRIMARY = ["af_vae_minus_vanilla_finetuned: enc_spsnr", "af_vae_minus_vanilla_finetuned: dec_spsnr",
           "af_vae_minus_vanilla_finetuned: recon_psnr"]
WEIGHT_DECAY = 0.01  # AdamW's, as in the reference trainer (torch's default)
COMPARE = ("vanilla VAE (fine-tuned)", "+ equivariance loss (AF-VAE)")  # the two rows of the figures and timings
PER_IMAGE = ("recon_psnr", "enc_spsnr", "dec_spsnr")
N_BOOT = 50  # bootstrap resamples of the test crops for rFID's standard error
EVAL_BATCH = 50
METRICS_JSON = "metrics/20_af_vae.json"
LOSS_CSV, SPSNR_CSV = "metrics/20_af_vae_loss.csv", "metrics/20_af_vae_spsnr.csv"
FIGURES = "figures/20_af_vae"


@dataclasses.dataclass(frozen=True)
class Config(StageConfig):
    """Sections ``base`` and ``vae`` of params.yaml (defaults: the cpu profile)."""

    SECTIONS = ("base", "vae")
    profile: str = "cpu"
    seed: int = 0
    device: str = "auto"
    vae_dataset: str = "natural"
    vae_pretrained: str = ""
    vae_channels: tuple[int, ...] = (16, 32, 32)
    vae_layers_per_block: int = 1
    crop_size: int = 32
    n_train: int = 2000
    n_test: int = 200
    vae_pretrain_steps: int = 1000
    vae_finetune_steps: int = 200
    vae_batch: int = 16
    vae_lr: float = 0.001
    vae_finetune_lr: float = 0.0003
    vae_ema_decay: float = 0.0
    vae_posterior: str = "sample"
    vae_kl_norm: str = "batch"
    kl_weight: float = 0.000001
    eq_weight: float = 1.0
    perceptual_weight: float = 0.0
    gan_weight: float = 0.0
    gan_start: int = 0
    disc_channels: tuple[int, ...] = (32, 64)
    spsnr_images: int = 32
    spsnr_crop: int = 64
    vae_seeds: int = 3

    @property
    def seeds(self) -> list[int]:
        """The fine-tuning seeds: ``seed``, ``seed + 1000``, ... (``vae_seeds`` of them)."""
        return training_seeds(self.seed, self.vae_seeds)

    def check(self) -> None:
        def need(ok, key, allowed):
            if not ok:
                raise ConfigError(f"vae.{key}: must be {allowed}, got {getattr(self, key)!r}")

        need(self.vae_dataset == "natural" or (self.vae_dataset.startswith("hub:") and len(self.vae_dataset) > 4),
             "vae_dataset", "'natural' or 'hub:<datasets name or local path>'")
        need(len(self.vae_channels) >= 1 and all(c >= 8 and c % 8 == 0 for c in self.vae_channels), "vae_channels",
             "a non-empty list of positive multiples of 8 (GroupNorm with 8 groups)")
        need(self.vae_layers_per_block >= 1, "vae_layers_per_block", ">= 1")
        need(self.crop_size >= 4, "crop_size", ">= 4")
        need(self.spsnr_crop >= 4, "spsnr_crop", ">= 4")
        need(self.n_train >= 1, "n_train", ">= 1")
        need(self.n_test >= 2, "n_test", ">= 2 (rFID needs two crops)")
        need(self.spsnr_images >= 2, "spsnr_images", ">= 2 (a standard error needs two images)")
        need(self.vae_dataset == "natural" or self.spsnr_images <= self.n_test, "spsnr_images",
             f"<= n_test ({self.n_test}) with a hub data set (SPSNR images are held-out images)")
        need(self.vae_pretrain_steps >= 0, "vae_pretrain_steps", ">= 0")
        need(self.vae_finetune_steps >= 1, "vae_finetune_steps", ">= 1 (the train-step cost is a ratio of rows)")
        need(self.vae_batch >= 1, "vae_batch", ">= 1")
        need(self.vae_seeds >= 1, "vae_seeds", ">= 1")
        need(self.vae_lr > 0, "vae_lr", "> 0")
        need(self.vae_finetune_lr > 0, "vae_finetune_lr", "> 0")
        need(0 <= self.vae_ema_decay < 1, "vae_ema_decay", "in [0, 1) (0: no EMA)")
        need(self.vae_posterior in V.POSTERIORS, "vae_posterior", f"one of {list(V.POSTERIORS)}")
        need(self.vae_kl_norm in V.KL_NORMS, "vae_kl_norm", f"one of {list(V.KL_NORMS)}")
        for key in ("kl_weight", "eq_weight", "perceptual_weight", "gan_weight", "gan_start"):
            need(getattr(self, key) >= 0, key, ">= 0")
        need(len(self.disc_channels) >= 1 and min(self.disc_channels) >= 1, "disc_channels",
             "a non-empty list of positive ints")


@dataclasses.dataclass
class Inputs:
    """Training crops, held-out test crops and the larger SPSNR crops, on the stage's device, in [-1, 1]."""

    train_x: torch.Tensor
    test_x: torch.Tensor
    spsnr_x: torch.Tensor


@dataclasses.dataclass
class Trained:
    """Every row's VAE (eval mode, on the device), the training histories and mean seconds per step, by run name
    ("pre-training" and the fine-tuned rows)."""

    models: dict
    histories: dict
    step_seconds: dict
    pretrained: torch.nn.Module

    @property
    def factor(self) -> int:
        return V.factor(self.pretrained)


def load_inputs(cfg: Config, dev) -> Inputs:
    """Seeded crops of scikit-image's photographs (``vae_dataset="natural"``) or a hub / local image set."""
    seed_everything(cfg.seed)
    if cfg.vae_dataset == "natural":
        train_x = data.random_crops(cfg.n_train, cfg.crop_size, seed=cfg.seed)
        test_x = data.random_crops(cfg.n_test, cfg.crop_size, seed=cfg.seed + 1)
        spsnr_x = data.random_crops(cfg.spsnr_images, cfg.spsnr_crop, seed=cfg.seed + 2)
    else:
        images = data.hub_images(cfg.vae_dataset[4:], max(cfg.crop_size, cfg.spsnr_crop), n=cfg.n_train + cfg.n_test)

        def resize(x, s):
            return torch.nn.functional.interpolate(x, size=(s, s), mode="area") if s != x.shape[-1] else x

        train_x, test_x = resize(images[:cfg.n_train], cfg.crop_size), resize(images[cfg.n_train:], cfg.crop_size)
        spsnr_x = resize(images[cfg.n_train:cfg.n_train + cfg.spsnr_images], cfg.spsnr_crop)
    return Inputs(train_x.to(dev), test_x.to(dev), spsnr_x.to(dev))


def batches(cfg: Config, train_x: torch.Tensor, seed: int | None = None):
    """``get_batch(step) -> (crops, batch_seed)``: indices drawn on the crops' device from a generator seeded by
    ``seed * 7919 + step`` (a function of the step alone, so a resumed run sees the same batches; ``seed`` defaults
    to the base seed)."""
    seed = cfg.seed if seed is None else seed

    def get_batch(step):
        batch_seed = seed * 7919 + step
        g = make_generator(batch_seed, train_x.device)
        return train_x[torch.randint(0, len(train_x), (cfg.vae_batch,), generator=g, device=train_x.device)], \
            batch_seed

    return get_batch


def loss_fn(cfg: Config, eq: bool, perceptual):
    """The training loss of one run: ``afcore.vae_gan.vae_gan_loss`` with the config's weights; posterior noise and
    the shift come from a generator on the batch's device seeded by ``batch_seed + 1``."""

    def loss(m, batch, step):
        x, batch_seed = batch
        return G.vae_gan_loss(m, x, make_generator(int(batch_seed) + 1, x.device), kl_weight=cfg.kl_weight,
                              eq_weight=cfg.eq_weight if eq else 0.0, perceptual_weight=cfg.perceptual_weight,
                              perceptual=perceptual, gan_weight=cfg.gan_weight, gan_start=cfg.gan_start, step=step,
                              posterior=cfg.vae_posterior, kl_norm=cfg.vae_kl_norm)

    return loss


def train_vae(cfg: Config, dev, model, name: str, steps: int, lr: float, eq: bool, alias_free_disc: bool,
              train_x: torch.Tensor, out_dir, seed: int | None = None) -> tuple[torch.nn.Module, list, float]:
    """Train ``model`` (an AutoencoderKL) for ``steps`` with training seed ``seed`` (default the base seed) in
    ``out_dir/checkpoints/vae/runs/<name>`` (``<name>/seed<seed>`` for another seed; resumable, stamped with the
    settings); returns (trained VAE in eval mode, history, mean seconds per step)."""
    seed = cfg.seed if seed is None else seed
    perceptual = G.PerceptualFeatures().to(dev) if cfg.perceptual_weight > 0 else None
    disc = (G.PatchDiscriminator(channels=tuple(cfg.disc_channels), alias_free=alias_free_disc)
            if cfg.gan_weight > 0 else None)
    wrapped = G.VAEWithDiscriminator(model, disc) if disc is not None else model
    fingerprint = dict(row=name, channels=cfg.vae_channels, layers=cfg.vae_layers_per_block, steps=steps, eq=eq,
                       batch=cfg.vae_batch, lr=lr, posterior=cfg.vae_posterior, kl_norm=cfg.vae_kl_norm,
                       loss_version=2, ema=cfg.vae_ema_decay, kl=cfg.kl_weight, eq_weight=cfg.eq_weight,
                       perceptual=cfg.perceptual_weight, gan=cfg.gan_weight, gan_start=cfg.gan_start,
                       disc=cfg.disc_channels, seed=seed, crop=cfg.crop_size, n_train=cfg.n_train,
                       dataset=cfg.vae_dataset, pretrained=cfg.vae_pretrained, pretrain_steps=cfg.vae_pretrain_steps,
                       data=data.checksum(train_x), weight_decay=WEIGHT_DECAY, code_path=code_path(), crop_seam="keep")
    slug = re.sub("[^a-z0-9]+", "_", name.lower()).strip("_")
    run_dir = prepare_run_dir(seed_path(Path(out_dir) / "checkpoints" / "vae" / "runs" / slug, seed, cfg.seed),
                              fingerprint)
    wrapped, ema, history = train_loop(wrapped, loss_fn(cfg, eq, perceptual), batches(cfg, train_x, seed),
                                       steps=steps, lr=lr, ckpt_dir=run_dir, ema_decay=cfg.vae_ema_decay or None,
                                       ckpt_every=max(steps // 4, 1), device=str(dev),
                                       desc=name if seed == cfg.seed else f"{name} seed {seed}",
                                       log_csv=run_dir / "loss.csv", weight_decay=WEIGHT_DECAY)
    final = ema if ema is not None else wrapped
    final = final.vae if isinstance(final, G.VAEWithDiscriminator) else final
    step_seconds = sum(h["seconds"] for h in history) / max(len(history), 1)  # per-step rows survive a resume
    return final.to(dev).eval(), history, step_seconds


def train_rows(cfg: Config, dev, inputs: Inputs, out_dir, seed: int | None = None,
               pretrained: torch.nn.Module | None = None) -> Trained:
    """Pre-train the vanilla VAE (or load ``vae_pretrained``; or take ``pretrained``, the base seed's), then give
    every row of ``ROWS`` its surgery and fine-tune it from those weights with training seed ``seed`` (default the
    base seed; the random-weights row is re-initialised from that seed instead)."""
    seed = cfg.seed if seed is None else seed
    seed_everything(cfg.seed)
    channels = tuple(cfg.vae_channels)
    if pretrained is not None:
        pretrain_history, pretrain_step = [], None
    elif cfg.vae_pretrained:
        pretrained = V.load_pretrained_vae(cfg.vae_pretrained).to(dev)
        pretrain_history, pretrain_step = [], None
    else:
        pretrained, pretrain_history, pretrain_step = train_vae(
            cfg, dev, V.small_vae(channels, layers_per_block=cfg.vae_layers_per_block), "pre-training",
            cfg.vae_pretrain_steps, cfg.vae_lr, eq=False, alias_free_disc=False, train_x=inputs.train_x,
            out_dir=out_dir)
    trained, histories, step_time = {}, {"pre-training": pretrain_history}, {"pre-training": pretrain_step}
    for name, (resample, nonlin, eq, finetune) in ROWS.items():
        if name == "AF-VAE, random weights":
            seed_everything(seed)
            model = (V.small_vae(channels, layers_per_block=cfg.vae_layers_per_block) if not cfg.vae_pretrained
                     else copy.deepcopy(pretrained))
            if cfg.vae_pretrained:  # random weights in SD's architecture
                for module in model.modules():
                    if hasattr(module, "reset_parameters"):
                        module.reset_parameters()
        else:
            model = copy.deepcopy(pretrained)
        if resample or nonlin:
            make_alias_free(model, resample=resample, nonlinearity=nonlin)
        model = model.to(dev)  # the surgery's filters join the model's device
        if finetune:
            model, histories[name], step_time[name] = train_vae(
                cfg, dev, model, name, cfg.vae_finetune_steps, cfg.vae_finetune_lr, eq,
                alias_free_disc=resample or nonlin, train_x=inputs.train_x, out_dir=out_dir, seed=seed)
        trained[name] = model.eval()
    return Trained(trained, histories, step_time, pretrained)


def checkpoint_root(cfg: Config, out_dir, seed: int | None = None) -> Path:
    """``checkpoints/vae`` for the base seed, ``checkpoints/vae/seed<seed>`` for another."""
    return seed_path(Path(out_dir) / "checkpoints" / "vae", cfg.seed if seed is None else seed, cfg.seed)


def save_checkpoints(trained: Trained, out_dir, cfg: Config | None = None, seed: int | None = None) -> None:
    """The pre-trained vanilla VAE and the AF-VAE of one training seed (default: the base seed's folder), from CPU
    copies so that any machine can load them."""
    root = Path(out_dir) / "checkpoints" / "vae" if cfg is None else checkpoint_root(cfg, out_dir, seed)
    save_alias_free(copy.deepcopy(trained.models["vanilla VAE (pre-trained)"]).cpu(), root / "vanilla")
    save_alias_free(copy.deepcopy(trained.models["+ equivariance loss (AF-VAE)"]).cpu(), root / "af_vae")


def loss_table(cfg: Config, histories: dict) -> list[dict]:
    """One row per training step of every run (fine-tuning steps counted after pre-training): MSE and the summed
    equivariance terms."""
    rows = []
    for name, hist in histories.items():
        offset = 0 if name == "pre-training" else cfg.vae_pretrain_steps
        for h in hist:
            rows.append({"run": name, "step": offset + h["step"], "mse": h["mse"],
                         "eq": h.get("eq_enc", 0.0) + h.get("eq_dec", 0.0)})
    return rows


@dataclasses.dataclass
class Evaluation:
    """Table 2: one dict per row (``rows``; ``by_row`` by stable key), the per-image values behind it and the
    bootstrap rFIDs (the same resamples for every row)."""

    rows: list
    by_row: dict
    per_image: dict
    rfid_boot: dict


def spsnr_per_image(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Enc, Dec) SPSNR per image, each averaged in dB over the image shifts 1..f px."""
    enc, dec = zip(*(V.enc_dec_spsnr(model, x, (0.0, float(k))) for k in range(1, V.factor(model) + 1)))
    return torch.stack(enc).mean(0), torch.stack(dec).mean(0)


@torch.no_grad()
def evaluate(cfg: Config, dev, inputs: Inputs, trained: Trained) -> Evaluation:
    """Per image: reconstruction PSNR (peak 2) on the test crops, Enc / Dec SPSNR on the SPSNR crops; rFID with
    calibrated random-CNN features and its bootstrap standard error; the paper's values alongside."""
    # calibrated once on the CPU (BatchNorm statistics); features are then extracted on the device
    features = evaluation.random_features(3, seed=cfg.seed, calibrate=inputs.train_x[:500].cpu())
    # bootstrap resamples of the test crops (host-side bookkeeping: features live on the CPU in float64)
    boot_gen = make_generator(cfg.seed + 5, "cpu")
    boot_idx = [torch.randint(0, cfg.n_test, (cfg.n_test,), generator=boot_gen, device="cpu") for _ in range(N_BOOT)]
    test_x = inputs.test_x
    real_feats = evaluation.extract(features, test_x, dev)
    rows, per_image, rfid_boot = [], {}, {}
    for name, model in tqdm(trained.models.items(), desc="evaluate rows", total=len(trained.models)):
        recon = torch.cat([V.decode(model, V.encode(model, test_x[i:i + EVAL_BATCH])).clamp(-1, 1)
                           for i in range(0, cfg.n_test, EVAL_BATCH)])
        enc, dec = spsnr_per_image(model, inputs.spsnr_x)
        per_image[name] = {"recon_psnr": metrics.psnr(recon, test_x, peak=2.0, per_sample=True),
                           "enc_spsnr": enc, "dec_spsnr": dec}
        row = {"row": name, "key": KEY[name]}
        for m, v in per_image[name].items():
            row[f"{m}_db"], row[f"{m}_se_db"] = (float(a) for a in mean_sem(v))
        fake_feats = evaluation.extract(features, recon, dev)
        row["rFID[rand-natural]"] = evaluation.frechet_distance(real_feats, fake_feats)
        rfid_boot[name] = torch.tensor([evaluation.frechet_distance(real_feats[i], fake_feats[i]) for i in boot_idx],
                                       dtype=torch.float64, device="cpu")
        row["rFID_boot_se"] = float(rfid_boot[name].std())
        paper = PAPER[name]
        row.update(paper_psnr=paper[0], paper_rFID=paper[1], paper_enc_spsnr=paper[2], paper_dec_spsnr=paper[3])
        rows.append(row)
    return Evaluation(rows, {r["key"]: r for r in rows}, per_image, rfid_boot)


def compare(ev: Evaluation) -> dict:
    """Row minus baseline for every pair of ``COMPARISONS``: per-image metrics as paired mean +- standard error,
    rFID with the standard error of the paired bootstrap differences."""
    comparisons = {}
    for key, (a, b) in COMPARISONS.items():
        c = {"row": a, "baseline": b}
        for m in PER_IMAGE:
            c[f"{m}_delta_db"], c[f"{m}_delta_se_db"] = paired_mean_sem(ev.per_image[a][m], ev.per_image[b][m])
        c["rFID_delta"] = ev.by_row[KEY[a]]["rFID[rand-natural]"] - ev.by_row[KEY[b]]["rFID[rand-natural]"]
        c["rFID_delta_boot_se"] = float((ev.rfid_boot[a] - ev.rfid_boot[b]).std())
        comparisons[key] = c
    return comparisons


@torch.no_grad()
def latent_spectra(inputs: Inputs, trained: Trained) -> dict:
    """Figure 2: the normalised radial power spectrum of each ``COMPARE`` row's latent of the SPSNR crops,
    ``{row: (freqs, power)}`` on the CPU."""
    out = {}
    for name in COMPARE:
        z = V.encode(trained.models[name], inputs.spsnr_x)
        freqs, power = signal.radial_power_spectrum(z - z.mean(dim=(-2, -1), keepdim=True))
        out[name] = (freqs.cpu(), (power / power.sum()).cpu())
    return out


@torch.no_grad()
def dec_spsnr_curve(inputs: Inputs, trained: Trained) -> list[dict]:
    """Figure 6 (VAE part): decoder SPSNR (mean +- standard error over the SPSNR crops) at latent shifts k/f,
    k = 1..2f, for the ``COMPARE`` rows."""
    f, curve = trained.factor, []
    for name in COMPARE:
        model = trained.models[name]
        z = V.encode(model, inputs.spsnr_x)
        for k in range(1, 2 * f + 1):
            per = metrics.spsnr(lambda t: V.decode(model, t), z, (0.0, k / f), scale=float(f), peak=2.0,
                                per_sample=True)
            mean, se = (float(v) for v in mean_sem(per))
            curve.append({"model": name, "latent_shift": k / f, "dec_spsnr_db": mean, "se_db": se})
    return curve


@torch.no_grad()
def faces_pan(cfg: Config, dev, trained: Trained) -> dict:
    """scikit-image's LFW faces (never trained on): each ``COMPARE`` decoder's SPSNR under latent shifts k/f,
    k = 1..f (mean +- standard error over faces, each face averaged in dB over the shifts), and, for the first face
    at every shift 0..f, the decode shifted back by the matching image shift and its |difference| from the unshifted
    decode (``panels[row] = [(image HWC, error HW), ...]`` in [0, 1], for the figure)."""
    faces = data.lfw_faces(cfg.spsnr_crop, flips=False)[:cfg.spsnr_images].to(dev)
    f = trained.factor
    shifts = [k / f for k in range(0, f + 1)]
    spsnr, panels = {}, {}
    for name in COMPARE:
        model = trained.models[name]
        z = V.encode(model, faces)
        reference = V.decode(model, z)
        per_face = torch.stack([metrics.spsnr(lambda t: V.decode(model, t), z, (0.0, s), scale=float(f), peak=2.0,
                                              per_sample=True) for s in shifts[1:]]).mean(0)
        spsnr[name] = [float(v) for v in mean_sem(per_face)]
        panels[name] = []
        for s in shifts:
            shifted_z, _ = signal.shift(z[:1], (0.0, s), mode="crop")
            back, mask = signal.shift(V.decode(model, shifted_z), (0.0, -s * f), mode="crop")
            error = ((back - reference[:1]).abs() * mask).mean(1)[0]
            panels[name].append((((back[0] * mask[0] + 1) / 2).clamp(0, 1).permute(1, 2, 0).cpu().numpy(),
                                 (8 * error / 2).clamp(0, 1).cpu().numpy()))
    return {"n_faces": len(faces), "shifts": shifts, "spsnr": spsnr, "panels": panels}


@torch.no_grad()
def codec_timing(cfg: Config, dev, inputs: Inputs, trained: Trained, repeats: int = 3) -> dict:
    """Best-of-``repeats`` encode / decode seconds of the SPSNR crops for the ``COMPARE`` rows, and the AF-VAE's
    cost relative to the vanilla fine-tuned VAE (encode, decode, train step)."""
    def best(fn, x):
        seconds = float("inf")
        for _ in range(repeats):
            with Timer(dev) as t:
                fn(x)
            seconds = min(seconds, t.seconds)
        return seconds

    timing = {}
    for name in COMPARE:
        model = trained.models[name]
        z = V.encode(model, inputs.spsnr_x)
        timing[name] = {"encode_s": best(lambda x: V.encode(model, x), inputs.spsnr_x),
                        "decode_s": best(lambda t: V.decode(model, t), z)}
    base = timing[COMPARE[0]]
    timing["af_vae_relative"] = {"encode": timing[COMPARE[1]]["encode_s"] / base["encode_s"],
                                 "decode": timing[COMPARE[1]]["decode_s"] / base["decode_s"],
                                 "train_step": trained.step_seconds[COMPARE[1]] / trained.step_seconds[COMPARE[0]]}
    dev = torch.device(dev)
    timing["batch"] = (f"{cfg.spsnr_images} crops of {cfg.spsnr_crop} px, best of {repeats}, "
                       + (torch.cuda.get_device_name(dev) if dev.type == "cuda"
                          else f"{torch.get_num_threads()} threads"))
    return timing


def replicate(cfg: Config, dev, inputs: Inputs, out_dir, trained: Trained, ev: Evaluation) -> dict:
    """Fine-tune and evaluate every row again for each further training seed, from the same pre-trained VAE, on the
    same crops, shifts and rFID features; saves each seed's VAEs for the af_ldm stage. Returns ``{seed: (Evaluation,
    comparisons)}``, the base seed's included (``ev``)."""
    out = {cfg.seed: (ev, compare(ev))}
    for seed in tqdm(cfg.seeds[1:], desc="further training seeds"):
        t = train_rows(cfg, dev, inputs, out_dir, seed=seed, pretrained=trained.pretrained)
        save_checkpoints(t, out_dir, cfg, seed)
        e = evaluate(cfg, dev, inputs, t)
        out[seed] = (e, compare(e))
    return out


def seed_level(cfg: Config, per_seed: dict) -> dict:
    """Every row's metrics as mean +- standard error over training seeds (``table``) and every comparison's paired
    difference, one number per seed, summarised with ``seeds.contrast_table`` (``contrasts``, keys ``"<comparison>:
    <metric>"``; primary: ``PRIMARY``, Holm-adjusted)."""
    seeds = list(per_seed)
    table = []
    for r in per_seed[seeds[0]][0].rows:
        row = {"row": r["row"], "key": r["key"], "n_seeds": len(seeds)}
        for m in ("recon_psnr_db", "enc_spsnr_db", "dec_spsnr_db", "rFID[rand-natural]"):
            s = seed_summary([per_seed[sd][0].by_row[r["key"]][m] for sd in seeds])
            row[m], row[f"{m}_se_seeds"], row[f"{m}_per_seed"] = s["mean"], s["se"], s["per_seed"]
        table.append(row)
    deltas = {}
    for key in COMPARISONS:
        for m in PER_IMAGE:
            deltas[f"{key}: {m}"] = [per_seed[sd][1][key][f"{m}_delta_db"] for sd in seeds]
        deltas[f"{key}: rFID"] = [per_seed[sd][1][key]["rFID_delta"] for sd in seeds]
    return {"seeds": seeds, "table": table, "by_row": {r["key"]: r for r in table},
            "contrasts": contrast_table(deltas, PRIMARY)}


def seed_markdown(level: dict) -> str:
    """The seed-level contrasts as a table: mean +- SE over seeds, the per-seed values, p and the verdict."""
    return contrast_markdown(level["contrasts"])


def summarise(cfg: Config, dev, trained: Trained, ev: Evaluation, comparisons: dict, faces: dict,
              timing: dict, level: dict) -> dict:
    """The metrics JSON (``metrics/20_af_vae.json``): the base seed's table and comparisons (``table``,
    ``comparisons``: errors over images), the seed-level ones (``seed_table``, ``seed_contrasts``: errors over
    training seeds) and the rest."""
    return {
        "profile": cfg.profile,
        "device": str(dev),
        "training_seeds": level["seeds"], "code_path": code_path(),
        "scale": {"pretrained": cfg.vae_pretrained or None,
                  "pretrain_steps": None if cfg.vae_pretrained else cfg.vae_pretrain_steps,
                  "finetune_steps": cfg.vae_finetune_steps, "batch": cfg.vae_batch, "crop": cfg.crop_size,
                  "dataset": cfg.vae_dataset, "test_crops": cfg.n_test, "spsnr_crops": cfg.spsnr_images,
                  "spsnr_crop": cfg.spsnr_crop},
        "conventions": "per-image values averaged in dB, mean ± standard error over images (paired differences for "
                       "comparisons); recon PSNR peak 2; Enc SPSNR peak = each target latent's range in the valid "
                       "mask; Dec SPSNR peak 2; cropped horizontal shifts of 1..f px; rFID with calibrated random-CNN "
                       f"features, bootstrap standard error over {N_BOOT} resamples of the test crops; seed_table "
                       "and seed_contrasts: mean ± standard error over training seeds (a contrast paired within each "
                       "seed over the same crops), t test on seeds - 1 degrees of freedom; multiple comparisons: "
                       + MULTIPLE_COMPARISONS,
        "losses": {"kl": cfg.kl_weight, "kl_norm": cfg.vae_kl_norm, "posterior": cfg.vae_posterior,
                   "eq": cfg.eq_weight, "perceptual": cfg.perceptual_weight, "gan": cfg.gan_weight,
                   "ema_decay": cfg.vae_ema_decay},
        "table": ev.rows,
        "by_row": ev.by_row,
        "comparisons": comparisons,
        "seed_table": level["table"],
        "seed_by_row": level["by_row"],
        "seed_contrasts": level["contrasts"],
        "goal": "Enc +15 dB, Dec +8 dB, recon within -1.5 dB of the pre-trained vanilla VAE (paper, against the "
                "released SD VAE: +20.0, +11.6, -1.4)",
        "train_step_seconds": trained.step_seconds,
        "timing": timing,
        "faces_dec_spsnr_db": {KEY[name]: {"mean": m, "se": se, "shifts_latent_px": faces["shifts"][1:],
                                           "faces": f"{faces['n_faces']} LFW faces, {cfg.spsnr_crop} px, "
                                                    "never trained on"}
                               for name, (m, se) in faces["spsnr"].items()},
    }


# --- figures and tables ---------------------------------------------------------------------------------------------

def plot_loss(cfg: Config, histories: dict):
    """Reconstruction MSE (moving average) of pre-training, then of each row's fine-tuning."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    for name, hist in histories.items():
        offset = 0 if name == "pre-training" else cfg.vae_pretrain_steps
        if hist:
            mse = torch.tensor([h["mse"] for h in hist], device="cpu")
            k = max(1, len(mse) // 20)
            smooth = torch.nn.functional.avg_pool1d(mse[None, None], k, 1)[0, 0] if len(mse) > k else mse
            ax.plot(offset + np.arange(1, len(smooth) + 1), smooth, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title("reconstruction MSE (moving average): pre-training, then each row's fine-tuning")
    ax.legend(fontsize=7)
    return fig


def plot_spectrum_and_spsnr(spectra: dict, curve: list[dict]):
    """Figure 2 (latent spectra) beside Figure 6's VAE part (decoder SPSNR against the latent shift)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for name, (freqs, power) in spectra.items():
        axes[0].semilogy(freqs, power, "o-", label=name)
    axes[0].set_xlabel("latent frequency (cycles/sample)")
    axes[0].set_title("latent radial power spectrum (normalised)")
    axes[0].legend()
    for name in dict.fromkeys(r["model"] for r in curve):
        points = [r for r in curve if r["model"] == name]
        axes[1].errorbar([r["latent_shift"] for r in points], [r["dec_spsnr_db"] for r in points],
                         yerr=[r["se_db"] for r in points], fmt="o-", capsize=2, label=name)
    axes[1].set_xlabel("horizontal latent shift (latent pixels)")
    axes[1].set_ylabel("decoder SPSNR (dB), mean ± s.e. over crops")
    axes[1].legend()
    return fig


def short_name(row: str) -> str:
    return "AF-VAE" if "AF-VAE" in row else row.split(" (")[0]


def plot_faces(cfg: Config, faces: dict):
    """Per ``COMPARE`` row: the decoded face shifted back at every latent shift, and its |error| x8 below."""
    import matplotlib.pyplot as plt

    shifts = faces["shifts"]
    fig, axes = plt.subplots(2 * len(faces["panels"]), len(shifts), figsize=(1.8 * len(shifts), 7.6))
    for r, (name, panel) in enumerate(faces["panels"].items()):
        for c, (s, (image, error)) in enumerate(zip(shifts, panel)):
            axes[2 * r, c].imshow(image)
            axes[2 * r + 1, c].imshow(error, cmap="magma", vmin=0, vmax=1)
            axes[2 * r, c].set_title(f"shift {s:.2f} latent px", fontsize=8)
            for a in (axes[2 * r, c], axes[2 * r + 1, c]):
                a.set_xticks([])
                a.set_yticks([])
        axes[2 * r, 0].set_ylabel(short_name(name), fontsize=8)
        axes[2 * r + 1, 0].set_ylabel("|error| x8", fontsize=8)
    fig.suptitle(f"decoded LFW faces shifted back ({cfg.spsnr_crop} px); decoder SPSNR on {faces['n_faces']} faces: "
                 + ", ".join(f"{short_name(n)} {m:.1f} ± {se:.1f} dB" for n, (m, se) in faces["spsnr"].items()),
                 fontsize=9)
    return fig


def pm(mean, se, digits=2) -> str:
    return f"{mean:.{digits}f} ± {se:.{digits}f}"


def table_markdown(cfg: Config, rows: list[dict], factor: int) -> str:
    """Table 2 at our scale (``Evaluation.rows``), with its scale note and the paper's values."""
    md = ("| row | recon PSNR | rFID[rand] | Enc SPSNR | Dec SPSNR | paper: PSNR / rFID / Enc / Dec |\n"
          "|---|---|---|---|---|---|\n")
    for r in rows:
        paper = " / ".join("–" if r[k] is None else f"{r[k]:.2f}"
                           for k in ("paper_psnr", "paper_rFID", "paper_enc_spsnr", "paper_dec_spsnr"))
        md += (f"| {r['row']} | {pm(r['recon_psnr_db'], r['recon_psnr_se_db'])} | "
               f"{pm(r['rFID[rand-natural]'], r['rFID_boot_se'], 1)} | "
               f"{pm(r['enc_spsnr_db'], r['enc_spsnr_se_db'])} | {pm(r['dec_spsnr_db'], r['dec_spsnr_se_db'])} | "
               f"{paper} |\n")
    source = cfg.vae_pretrained or f"pre-trained here for {cfg.vae_pretrain_steps} steps"
    return (f"**Scale:** vanilla VAE {source}; each row fine-tuned {cfg.vae_finetune_steps} steps, batch "
            f"{cfg.vae_batch}, {cfg.crop_size} px crops ({cfg.vae_dataset}), factor {factor}; {cfg.n_test} test "
            "crops. Recon PSNR peak 2, per image. rFID with calibrated random-CNN features (not Inception), "
            f"± a bootstrap standard error ({N_BOOT} resamples of the test crops). SPSNR: horizontal shifts of "
            f"1..f image pixels (latent 1/f..1), cropped, per image over {cfg.spsnr_images} crops of "
            f"{cfg.spsnr_crop} px, Enc peak = each target latent's range, Dec peak 2; mean ± standard error over "
            "images. `paper`: Zhou et al.'s Table 2 (SD-VAE, ImageNet 256 px, Inception rFID, other peak and image "
            "size), for orientation only: absolute values are not comparable across models, sizes and "
            "conventions.\n\n" + md)


def comparisons_markdown(comparisons: dict) -> str:
    md = "| row minus baseline | recon PSNR (dB) | rFID | Enc SPSNR (dB) | Dec SPSNR (dB) |\n|---|---|---|---|---|\n"
    for c in comparisons.values():
        md += (f"| {c['row']} − {c['baseline']} | {pm(c['recon_psnr_delta_db'], c['recon_psnr_delta_se_db'])} | "
               f"{pm(c['rFID_delta'], c['rFID_delta_boot_se'], 1)} | "
               f"{pm(c['enc_spsnr_delta_db'], c['enc_spsnr_delta_se_db'])} | "
               f"{pm(c['dec_spsnr_delta_db'], c['dec_spsnr_delta_se_db'])} |\n")
    return md


def verdict_markdown(comparisons: dict) -> str:
    """One line per comparison: each difference, its standard error and whether this run resolves it (|difference|
    at least twice its standard error) and in which direction."""
    lines = []
    for c in comparisons.values():
        parts = [f"{label} {c[f'{m}_delta_db']:+.2f} ± {c[f'{m}_delta_se_db']:.2f} dB "
                 f"({verdict(c[f'{m}_delta_db'], c[f'{m}_delta_se_db'])})"
                 for m, label in (("enc_spsnr", "Enc"), ("dec_spsnr", "Dec"), ("recon_psnr", "recon"))]
        parts.append(f"rFID {c['rFID_delta']:+.1f} ± {c['rFID_delta_boot_se']:.1f} "
                     f"({verdict(c['rFID_delta'], c['rFID_delta_boot_se'])})")
        lines.append(f"* **{c['row']} − {c['baseline']}**: " + "; ".join(parts))
    return "\n".join(lines)


# --- outputs and the whole stage ------------------------------------------------------------------------------------

def write_outputs(out_dir, summary: dict, losses: list[dict], curve: list[dict], figures: dict | None = None) -> None:
    """The metrics JSON, the loss and SPSNR-curve CSVs (DVC plots) and the figures (``{file stem: figure}``)."""
    save_json(summary, out_path(out_dir, METRICS_JSON))
    save_csv(losses, out_path(out_dir, LOSS_CSV))
    save_csv(curve, out_path(out_dir, SPSNR_CSV))
    for stem, fig in (figures or {}).items():
        save_figure(fig, out_path(out_dir, FIGURES, f"{stem}.png"))


def run(cfg: Config, device: str = "auto", out_dir=".") -> dict:
    """The whole stage: train, save checkpoints, evaluate, write metrics and figures under ``out_dir``; returns the
    metrics dict."""
    import matplotlib.pyplot as plt

    dev = pick_device(device, cfg.deterministic)
    inputs = load_inputs(cfg, dev)
    trained = train_rows(cfg, dev, inputs, out_dir)
    save_checkpoints(trained, out_dir, cfg)
    losses = loss_table(cfg, trained.histories)
    ev = evaluate(cfg, dev, inputs, trained)
    comparisons = compare(ev)
    spectra = latent_spectra(inputs, trained)
    curve = dec_spsnr_curve(inputs, trained)
    faces = faces_pan(cfg, dev, trained)
    timing = codec_timing(cfg, dev, inputs, trained)
    level = seed_level(cfg, replicate(cfg, dev, inputs, out_dir, trained, ev))
    summary = summarise(cfg, dev, trained, ev, comparisons, faces, timing, level)
    figures = {"loss": plot_loss(cfg, trained.histories), "spectrum_and_spsnr": plot_spectrum_and_spsnr(spectra, curve),
               "faces_pan": plot_faces(cfg, faces)}
    write_outputs(out_dir, summary, losses, curve, figures)
    for fig in figures.values():
        plt.close(fig)
    return summary
