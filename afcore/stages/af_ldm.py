"""Stage ``af_ldm`` (notebook 30_af_ldm): AF-LDM's Table 3, Figures 5 and 6 at this workbook's scale.

Unconditional latent U-Nets (``afcore.ldm.latent_unet``) in the latent spaces of the af_vae stage's two VAEs: plain,
alias-free resampling, filtered nonlinearity, three rows that continue a base row with the U-Net equivariance loss
(with and without cross-frame attention in the loss), and for each continued base row its control: the same base
continued for the same number of steps without the loss, so that "the loss helps" is not "more steps help".
``ldm_models`` picks which models to train (the cpu profile the AF-LDM chain and its control; the gpu profile all);
a Table 3 row whose model is not trained is left out. Checkpoints (resumable, stamped with the settings) in
``checkpoints/ldm/<model>``, sampling weights (EMA) in ``checkpoints/ldm/<model>/unet``.

Training seeds (``ldm_seeds``, ``afcore.stages.seeds``): every model is trained once per seed, seed k in the latent
space of the af_vae stage's seed k (so a replicate repeats the whole chain, VAE fine-tuning included); every seed is
evaluated on the same initial latents and shifts, each comparison is computed within the seed (paired over latents)
and summarised over seeds. The base seed's models also make the figures, the sweep, the pan and the timings; other
seeds' checkpoints live in ``checkpoints/ldm/seed<seed>/<model>``.

Steps, in the order ``run`` calls them: ``setup``, ``load_inputs``, ``train_rows``, ``loss_curves``,
``fid_eval``, ``spsnr_eval``, ``make_table``, ``per_step``, ``sweep_eval``, ``pan_frames``, ``time_sampling``,
``replicate``, ``seed_level``, ``summarise``, ``write_outputs``. Every random draw keeps the seed and the order of the
notebook it came from.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from afcore import data, evaluation, ldm, metrics, signal
from afcore import vae as V
from afcore.attention import EquivariantAttention, use_sdpa
from afcore.backend import code_path
from afcore.stages.af_vae import checkpoint_root as vae_checkpoint_root
from afcore.stages.common import (ConfigError, StageConfig, Timer, batch_sampler, make_generator, mean_sem,
                                  out_path, pick_device, verdict)
from afcore.stages.seeds import MULTIPLE_COMPARISONS, contrast_markdown, contrast_table, seed_path, seed_summary, training_seeds
from afcore.surgery import load_alias_free, make_alias_free, save_alias_free
from afcore.train import prepare_run_dir, train_loop
from afcore.utils import save_csv, save_figure, save_gif, save_json, seed_everything

DATASETS = ("natural32", "mnist_m", "natural", "lfw")  # or "hub:<datasets name or folder>"
N_BOOT = 50  # bootstrap resamples of the FID
MODELS = {  # key: (VAE, ideal sampling, filtered nonlinearity, equivariance loss, CFA in the loss, continues from)
    "ldm_vanilla_vae": ("vanilla", False, False, False, False, None),
    "ldm_af_vae": ("af_vae", False, False, False, False, None),
    "ideal_sampling": ("af_vae", True, False, False, False, None),
    "filtered_nonlinearity": ("af_vae", True, True, False, False, None),
    "eq_loss_no_cfa": ("af_vae", True, True, True, False, "filtered_nonlinearity"),
    "af_ldm": ("af_vae", True, True, True, True, "filtered_nonlinearity"),
    "plain_unet_eq_loss": ("af_vae", False, False, True, True, "ldm_af_vae"),
    # controls: the base rows continued for the same steps without the loss
    "filtered_nonlinearity_continued": ("af_vae", True, True, False, False, "filtered_nonlinearity"),
    "ldm_af_vae_continued": ("af_vae", False, False, False, False, "ldm_af_vae"),
}
WEIGHT_DECAY = 0.01  # AdamW's, as in the reference trainer (torch's default)
MODEL_VAE = {k: v[0] for k, v in MODELS.items()} | {"random": "af_vae"}
ROWS = [  # (stable key, Table 3 row, model, CFA at inference, paper's (FID, latent SPSNR, image SPSNR))
    ("vanilla_vae", "LDM w/ vanilla VAE", "ldm_vanilla_vae", False, (14.91, 27.47, 12.38)),
    ("vanilla_vae_cfa", "+ CFA in inference", "ldm_vanilla_vae", True, (14.91, 38.22, 21.69)),
    ("af_vae", "LDM w/ AF-VAE", "ldm_af_vae", False, (15.27, 22.87, 12.18)),
    ("af_vae_cfa", "+ CFA in inference", "ldm_af_vae", True, (15.27, 23.58, 13.09)),
    ("ideal_sampling", "+ ideal sampling", "ideal_sampling", True, (17.03, 24.44, 14.03)),
    ("filtered_nonlinearity", "+ filtered nonlinearity", "filtered_nonlinearity", True, (14.28, 24.53, 14.15)),
    ("eq_loss_no_cfa", "+ equivariance loss w/o CFA", "eq_loss_no_cfa", True, (16.90, 28.57, 17.65)),
    ("af_ldm", "+ CFA in equivariance loss (AF-LDM)", "af_ldm", True, (19.05, 40.94, 28.06)),
    ("plain_unet_eq_loss", "LDM w/ AF-VAE + equivariance loss", "plain_unet_eq_loss", True, (39.14, 37.63, 25.99)),
    ("filtered_nonlinearity_continued", "control: + filtered nonlinearity, continued without the loss",
     "filtered_nonlinearity_continued", True, (None, None, None)),
    ("ldm_af_vae_continued", "control: LDM w/ AF-VAE, continued without the loss", "ldm_af_vae_continued", True,
     (None, None, None)),
    ("af_ldm_random", "AF-LDM random weights", "random", True, (None, 39.84, 29.68)),
]
COMPARISONS = [("vanilla_vae_cfa", "vanilla_vae"), ("af_vae", "vanilla_vae"), ("af_vae_cfa", "af_vae"),
               ("ideal_sampling", "af_vae_cfa"), ("filtered_nonlinearity", "ideal_sampling"),
               ("eq_loss_no_cfa", "filtered_nonlinearity"), ("af_ldm", "eq_loss_no_cfa"),
               ("af_ldm", "vanilla_vae_cfa"), ("af_ldm", "af_vae_cfa"), ("plain_unet_eq_loss", "af_ldm"),
               ("af_ldm_random", "af_ldm"),
               ("eq_loss_no_cfa", "filtered_nonlinearity_continued"), ("af_ldm", "filtered_nonlinearity_continued"),
               ("filtered_nonlinearity_continued", "filtered_nonlinearity"),
               ("plain_unet_eq_loss", "ldm_af_vae_continued")]
# Table 3's SPSNR protocol -> (how the initial noise is shifted, the latent PSNR's peak): ours shifts circularly (a
# circularly shifted white noise is white noise) with each target's range as peak; the reference's script crops the
# shifted noise (zero border), decodes latent * mask and takes the range over both latents. The DDIM step count is
# ldm_sample_steps either way (the reference: 50).
SPSNR_PROTOCOLS = {"workbook": ("circular", "range"), "reference": ("crop", "joint-range")}
REQUIRED_MODELS = ("ldm_vanilla_vae", "filtered_nonlinearity", "af_ldm", "filtered_nonlinearity_continued")
# pre-registered primary contrasts (Holm family): the paper's headline and the loss against its control
PRIMARY = ["af_ldm_minus_vanilla_vae_cfa: image_spsnr", "af_ldm_minus_vanilla_vae_cfa: latent_spsnr",
           "af_ldm_minus_filtered_nonlinearity_continued: image_spsnr"]
STEP_PAIR = (("vanilla_vae_cfa", "ldm_vanilla_vae", "standard LDM (+ CFA)"), ("af_ldm", "af_ldm", "AF-LDM"))


@dataclasses.dataclass(frozen=True)
class Config(StageConfig):
    """The ``base`` and ``ldm`` sections of params.yaml (defaults: the cpu profile)."""

    SECTIONS = ("base", "ldm")

    ldm_dataset: str = "natural32"
    ldm_image_size: int = 32
    ldm_channels: tuple[int, ...] = (32, 64)
    ldm_layers_per_block: int = 1
    ldm_schedule: str = "af-ldm"
    ldm_train_steps: int = 600
    ldm_finetune_steps: int = 200
    ldm_batch: int = 32
    ldm_lr: float = 0.001
    ldm_ema_decay: float = 0.995
    ldm_ckpt_every: int = 200
    ldm_eq_weight: float = 1.0
    ldm_stop_grad: str = "none"
    ldm_cfa_detach: bool = True
    ldm_spsnr_protocol: str = "workbook"
    ldm_sample_steps: int = 20
    ldm_fid_samples: int = 200
    ldm_spsnr_latents: int = 64
    ldm_spsnr_groups: int = 8
    ldm_sweep_latents: int = 8
    ldm_sweep_eighths: int = 16
    ldm_timing_batch: int = 16
    ldm_seeds: int = 3
    ldm_models: tuple[str, ...] = ("ldm_vanilla_vae", "filtered_nonlinearity", "eq_loss_no_cfa", "af_ldm",
                                   "filtered_nonlinearity_continued")

    @property
    def seeds(self) -> list[int]:
        """The training seeds: ``seed``, ``seed + 1000``, ... (``ldm_seeds`` of them)."""
        return training_seeds(self.seed, self.ldm_seeds)

    def check(self) -> None:
        def need(ok, key, allowed):
            if not ok:
                raise ConfigError(f"ldm.{key}: {getattr(self, key)!r}; allowed: {allowed}")

        ds = self.ldm_dataset
        need(ds in DATASETS or (ds.startswith("hub:") and len(ds) > 4), "ldm_dataset",
             f"{list(DATASETS)} or 'hub:<datasets name or folder>'")
        need(ds not in ("natural32", "mnist_m") or self.ldm_image_size == 32, "ldm_image_size",
             f"32 for ldm_dataset={ds!r} (the data stage's size; 'natural' gives photo crops of any size)")
        need(self.ldm_image_size >= 8, "ldm_image_size", ">= 8")
        need(len(self.ldm_channels) >= 2 and all(c >= 8 and c % 8 == 0 for c in self.ldm_channels), "ldm_channels",
             "at least 2 levels, each a multiple of 8 (GroupNorm with 8 groups)")
        need(self.ldm_schedule in ldm.SCHEDULES, "ldm_schedule", list(ldm.SCHEDULES))
        need(self.ldm_stop_grad in ldm.STOP_GRADS, "ldm_stop_grad", list(ldm.STOP_GRADS))
        for key in ("ldm_layers_per_block", "ldm_batch", "ldm_sample_steps", "ldm_spsnr_groups",
                    "ldm_sweep_latents", "ldm_sweep_eighths", "ldm_timing_batch"):
            need(getattr(self, key) >= 1, key, ">= 1")
        for key in ("ldm_train_steps", "ldm_finetune_steps", "ldm_ckpt_every"):
            need(getattr(self, key) >= 0, key, ">= 0")
        need(self.ldm_lr > 0, "ldm_lr", "> 0")
        need(0 < self.ldm_ema_decay < 1, "ldm_ema_decay", "0 < ldm_ema_decay < 1")
        need(self.ldm_eq_weight >= 0, "ldm_eq_weight", ">= 0")
        need(self.ldm_fid_samples >= 2, "ldm_fid_samples", ">= 2 (FID needs 2 samples)")
        need(self.ldm_seeds >= 1, "ldm_seeds", ">= 1")
        need(self.ldm_spsnr_protocol in SPSNR_PROTOCOLS, "ldm_spsnr_protocol", list(SPSNR_PROTOCOLS))
        need(len(self.ldm_models) > 0 and all(m in MODELS for m in self.ldm_models), "ldm_models",
             f"a non-empty list of {list(MODELS)}")
        need(all(m in self.ldm_models for m in REQUIRED_MODELS), "ldm_models",
             f"a list holding {list(REQUIRED_MODELS)} (the figures and the primary contrasts need them)")
        for m in self.ldm_models:
            need(MODELS[m][5] is None or MODELS[m][5] in self.ldm_models, "ldm_models",
                 f"every continued model's base in the list ({m} continues {MODELS[m][5]})")
        need(self.ldm_spsnr_latents >= self.ldm_spsnr_groups and self.ldm_spsnr_latents % self.ldm_spsnr_groups == 0,
             "ldm_spsnr_latents", f"a positive multiple of ldm_spsnr_groups ({self.ldm_spsnr_groups})")


def setup(cfg: Config, device: str) -> torch.device:
    """Seed everything and resolve ``device`` (models, latents, noise, sampling and metrics all live there), with
    cuDNN deterministic as ``base.deterministic`` says."""
    seed_everything(cfg.seed)
    return pick_device(device, cfg.deterministic)


@dataclasses.dataclass
class Inputs:
    dev: torch.device
    classifier: torch.nn.Module  # FID features
    vaes: dict                   # "vanilla" / "af_vae" -> AutoencoderKL on dev
    factor: int                  # the VAEs' down-sampling factor
    train_images: torch.Tensor
    test_images: torch.Tensor
    latents: dict                # training latents per VAE, scaled to unit standard deviation
    scales: dict
    latent_shape: tuple


def load_inputs(cfg: Config, dev, root, seed: int | None = None, base: Inputs | None = None) -> Inputs:
    """The images (data stage set, or crops / faces / hub images split here), the FID feature network, both VAEs
    of training seed ``seed`` (default the base seed: ``checkpoints/vae/{vanilla,af_vae}``; another seed:
    ``checkpoints/vae/seed<seed>/...``, the af_vae stage's matching seed) and the training latents, scaled to unit
    variance (SD's 0.18215). ``base``: the base seed's inputs, whose images and features are reused."""
    from diffusers import AutoencoderKL

    root = Path(root)
    seed = cfg.seed if seed is None else seed
    vae_dir = vae_checkpoint_root(cfg, root, seed)
    if seed != cfg.seed and not (vae_dir / "af_vae").exists():
        raise FileNotFoundError(f"{vae_dir / 'af_vae'} not found: ldm_seeds ({cfg.ldm_seeds}) needs the af_vae stage "
                                f"to have trained seed {seed} (vae.vae_seeds >= ldm.ldm_seeds; `dvc repro af_vae`)")
    if base is not None:
        return _encode(base.dev, base.classifier, _load_vaes(AutoencoderKL, vae_dir, base.dev), base.train_images,
                       base.test_images)
    if cfg.ldm_dataset in ("natural32", "mnist_m"):  # data-stage sets, with the classifier stage's FID features
        prepared = data.load_prepared(cfg.ldm_dataset, root=str(root / "data"))
        classifier = evaluation.load_classifier(root / "checkpoints" / "classifier" / f"{cfg.ldm_dataset}.pt")
    else:  # photo crops, faces, FFHQ & co.
        if cfg.ldm_dataset == "natural":  # 5,000 crops, a seed the VAE stage did not use
            images = data.random_crops(5000, cfg.ldm_image_size, seed=cfg.seed + 3)
        elif cfg.ldm_dataset == "lfw":
            images = data.lfw_faces(cfg.ldm_image_size)
        else:
            images = data.hub_images(cfg.ldm_dataset[4:], cfg.ldm_image_size)
        prepared = data.split(images, None, test_fraction=0.2, seed=cfg.seed)
        classifier = evaluation.random_features(3, seed=cfg.seed, calibrate=prepared["train"])
    return _encode(dev, classifier, _load_vaes(AutoencoderKL, vae_dir, dev), prepared["train"].to(dev),
                   prepared["test"].to(dev))


def _load_vaes(cls, vae_dir: Path, dev) -> dict:
    vaes = {}
    for k in ("vanilla", "af_vae"):
        vaes[k] = load_alias_free(cls, vae_dir / k).to(dev).eval()
        use_sdpa(vaes[k])
    return vaes


def _encode(dev, classifier, vaes: dict, train_images, test_images) -> Inputs:
    latents, scales = {}, {}
    for k, vae in vaes.items():
        z = ldm.encode_latents(vae, train_images)
        scales[k] = float(1 / z.std())
        latents[k] = z * scales[k]
    return Inputs(dev, classifier, vaes, V.factor(vaes["vanilla"]), train_images, test_images, latents, scales,
                  tuple(latents["vanilla"].shape[1:]))


def decoder(inputs: Inputs, vae_key: str):
    """Scaled latents -> images in [-1, 1] through that VAE, 200 at a time, without gradients."""
    vae, s = inputs.vaes[vae_key], inputs.scales[vae_key]

    @torch.no_grad()
    def decode(z):
        return torch.cat([vae.decode(z[i:i + 200] / s).sample for i in range(0, len(z), 200)]).clamp(-1, 1)

    return decode


def build(cfg: Config, inputs: Inputs, resample: bool, nonlin: bool, seed: int | None = None):
    """A freshly initialised latent U-Net (weights seeded by ``seed``, default the base seed), made alias-free as
    asked."""
    seed_everything(cfg.seed if seed is None else seed)
    unet = ldm.latent_unet(tuple(cfg.ldm_channels), latent_channels=inputs.latent_shape[0],
                           sample_size=inputs.latent_shape[-1], layers_per_block=cfg.ldm_layers_per_block)
    if resample or nonlin:
        make_alias_free(unet, resample=resample, nonlinearity=nonlin)
    return unet.to(inputs.dev)


def train_model(cfg: Config, inputs: Inputs, key: str, trained: dict, root, seed: int | None = None):
    """Train (or resume) one model of ``MODELS`` with training seed ``seed`` (default the base seed): from scratch
    for ``ldm_train_steps``, or, for a row that continues another (already in ``trained``), ``ldm_finetune_steps``
    more, with the equivariance loss where the row says so. Returns ``(EMA model, history, summed step seconds)``."""
    seed = cfg.seed if seed is None else seed
    vae_key, resample, nonlin, eq, cfa_loss, start = MODELS[key]
    steps = cfg.ldm_finetune_steps if start else cfg.ldm_train_steps
    fingerprint = dict(model=MODELS[key], channels=list(cfg.ldm_channels), steps=steps,
                       start_steps=cfg.ldm_train_steps, batch=cfg.ldm_batch, lr=cfg.ldm_lr, ema=cfg.ldm_ema_decay,
                       eq_weight=cfg.ldm_eq_weight, stop_grad=cfg.ldm_stop_grad, schedule=cfg.ldm_schedule,
                       layers=cfg.ldm_layers_per_block, seed=seed, vae_scale=inputs.scales[vae_key],
                       cfa_detach=cfg.ldm_cfa_detach, weight_decay=WEIGHT_DECAY, code_path=code_path(),
                       dataset=cfg.ldm_dataset, image_size=cfg.ldm_image_size, loss_version=2,
                       data=data.checksum(inputs.train_images),  # new images or a retrained VAE: not resumed
                       vae=data.checksum(torch.cat([p.flatten() for p in inputs.vaes[vae_key].state_dict().values()])))
    run_dir = prepare_run_dir(seed_path(Path(root) / "checkpoints" / "ldm", seed, cfg.seed) / key, fingerprint)
    unet = build(cfg, inputs, resample, nonlin, seed)
    if start:
        unet.load_state_dict(trained[start].state_dict())
    scheduler = ldm.make_scheduler("ddpm", schedule=cfg.ldm_schedule)
    # indices from a generator on the device seeded by (seed, step): a function of the step alone (exact resume)
    get_batch = batch_sampler(inputs.latents[vae_key], batch_size=cfg.ldm_batch, seed=seed, device=inputs.dev)
    eq_weight = cfg.ldm_eq_weight if eq else 0.0

    def loss_fn(m, batch, step):
        z, batch_seed = batch  # timesteps, noise and the shift from a generator on the latents' device
        return ldm.ldm_loss(m, z, scheduler, make_generator(int(batch_seed) + 1, z.device), eq_weight=eq_weight,
                            cfa=cfa_loss, stop_grad=cfg.ldm_stop_grad, cfa_detach=cfg.ldm_cfa_detach)

    unet, ema, history = train_loop(unet, loss_fn, get_batch, steps=steps, lr=cfg.ldm_lr, ckpt_dir=run_dir,
                                    ckpt_every=cfg.ldm_ckpt_every, ema_decay=cfg.ldm_ema_decay,
                                    device=str(inputs.dev), desc=key if seed == cfg.seed else f"{key} seed {seed}",
                                    log_csv=run_dir / "loss.csv", weight_decay=WEIGHT_DECAY)
    model = (ema or unet).to(inputs.dev).eval()
    save_alias_free(copy.deepcopy(model).cpu(), run_dir / "unet")  # loadable on any machine
    return model, history, sum(h["seconds"] for h in history)  # per-step rows survive a resume, a wall clock not


def train_rows(cfg: Config, inputs: Inputs, root, seed: int | None = None) -> dict:
    """Every model of ``ldm_models`` in ``MODELS``' order (continued rows after their base) with training seed
    ``seed`` (default the base seed), plus ``"random"``: the AF-LDM architecture untrained. Returns ``{"trained",
    "histories", "train_seconds"}``."""
    trained, histories, seconds = {}, {}, {}
    for key in (k for k in MODELS if k in cfg.ldm_models):
        trained[key], histories[key], seconds[key] = train_model(cfg, inputs, key, trained, root, seed)
    trained["random"] = build(cfg, inputs, True, True, seed).eval()
    return {"trained": trained, "histories": histories, "train_seconds": seconds}


def active_rows(trained: dict) -> list:
    """The rows of ``ROWS`` whose model was trained (``"random"`` always is)."""
    return [r for r in ROWS if r[2] in trained]


def loss_curves(cfg: Config, histories: dict) -> list[dict]:
    """Rows (model, step counted from the start of the base row, diffusion and equivariance loss) of the loss CSV."""
    curves = []
    for key, hist in histories.items():
        offset = cfg.ldm_train_steps if MODELS[key][5] else 0
        curves += [{"model": key, "step": offset + h["step"], "diffusion": h.get("diffusion", h["loss"]),
                    "equivariance": h.get("equivariance", float("nan"))} for h in hist]
    return curves


@torch.no_grad()
def fid_eval(cfg: Config, inputs: Inputs, trained: dict) -> dict:
    """FID of ``ldm_fid_samples`` DDIM samples per model against the test images (the same initial noise for every
    model), its bootstrap over ``N_BOOT`` paired resamples, and each VAE's reconstruction FID."""
    dev = inputs.dev
    fid_noise = torch.randn((cfg.ldm_fid_samples,) + inputs.latent_shape, generator=make_generator(cfg.seed + 11, dev),
                            device=dev)
    real_feats = evaluation.extract(inputs.classifier, inputs.test_images, dev)
    n_test = len(inputs.test_images)
    boot_gen = make_generator(cfg.seed + 13, "cpu")  # host-side bookkeeping: features live on the CPU in float64
    boot = [(torch.randint(0, n_test, (n_test,), generator=boot_gen, device="cpu"),
             torch.randint(0, cfg.ldm_fid_samples, (cfg.ldm_fid_samples,), generator=boot_gen, device="cpu"))
            for _ in range(N_BOOT)]
    fid, fid_boot, samples = {}, {}, {}
    for key in tqdm([k for k in MODELS if k in trained], desc="FID", leave=False):
        z = torch.cat([ldm.sample(trained[key], fid_noise[i:i + 200], cfg.ldm_sample_steps, schedule=cfg.ldm_schedule)
                       for i in range(0, cfg.ldm_fid_samples, 200)])
        samples[key] = decoder(inputs, MODEL_VAE[key])(z)
        fid[key] = evaluation.quality_metrics(inputs.test_images, samples[key], inputs.classifier,
                                              tag=cfg.ldm_dataset, device=dev)
        fake_feats = evaluation.extract(inputs.classifier, samples[key], dev)
        fid_boot[key] = torch.tensor([evaluation.frechet_distance(real_feats[i], fake_feats[j]) for i, j in boot],
                                     dtype=torch.float64, device="cpu")
    fid_name = next(k for k in fid[key] if k.startswith("FID["))
    reconstruction_fid = {}
    for k in inputs.vaes:
        recon = decoder(inputs, k)(ldm.encode_latents(inputs.vaes[k], inputs.test_images) * inputs.scales[k])
        reconstruction_fid[k] = evaluation.quality_metrics(inputs.test_images, recon, inputs.classifier,
                                                           tag=cfg.ldm_dataset, device=dev)[fid_name]
    return {"fid": fid, "fid_boot": fid_boot, "samples": samples, "fid_name": fid_name,
            "reconstruction_fid": reconstruction_fid}


@torch.no_grad()
def spsnr_eval(cfg: Config, inputs: Inputs, trained: dict) -> dict:
    """Table 3's SPSNR: ``ldm_spsnr_groups`` random shifts (1/8-pixel grid, zero shift redrawn), one per group of
    initial latents, each group sampled unshifted and shifted (CFA where the row says so). Returns ``{"groups",
    "consistency"}``, the latter per row: per-latent ``latent`` / ``image`` dB and ``per_step`` [step, latent]."""
    shift_gen = make_generator(cfg.seed + 23, "cpu")  # the shifts are plain numbers: drawn on the host
    groups = []
    for _ in range(cfg.ldm_spsnr_groups):
        d = (0.0, 0.0)
        while d == (0.0, 0.0):
            d = ldm.sample_latent_shift(inputs.latent_shape[-2:], shift_gen)
        groups.append(d)
    noise = torch.randn((cfg.ldm_spsnr_latents,) + inputs.latent_shape,
                        generator=make_generator(cfg.seed + 29, inputs.dev), device=inputs.dev)
    per_group = cfg.ldm_spsnr_latents // cfg.ldm_spsnr_groups
    consistency = {}
    for row_key, _, key, cfa, _ in tqdm(active_rows(trained), desc="SPSNR", leave=False):
        latent_db, image_db, step_db = [], [], []
        for g, d in enumerate(groups):
            noise_shift, latent_peak = SPSNR_PROTOCOLS[cfg.ldm_spsnr_protocol]
            r = ldm.shift_consistency(trained[key], noise[g * per_group:(g + 1) * per_group], [d],
                                      steps=cfg.ldm_sample_steps, cfa=cfa, decode=decoder(inputs, MODEL_VAE[key]),
                                      factor=inputs.factor, schedule=cfg.ldm_schedule, noise_shift=noise_shift,
                                      latent_peak=latent_peak)
            latent_db.append(r["latent"][0])
            image_db.append(r["image"][0])
            step_db.append(r["per_step"][0])
        consistency[row_key] = {"latent": torch.cat(latent_db).cpu(), "image": torch.cat(image_db).cpu(),
                                "per_step": torch.cat(step_db, dim=1).cpu()}
    return {"groups": groups, "consistency": consistency}


def make_table(quality: dict, consistency: dict) -> dict:
    """Table 3's rows (FID ± bootstrap SE, latent / image SPSNR ± SE over latents, the paper's values) and the
    paired comparisons of ``COMPARISONS`` (row minus baseline over the same latents and shifts; FID over the same
    bootstrap resamples). Returns ``{"rows", "by_row", "comparisons"}``."""
    fid, fid_boot, fid_name = quality["fid"], quality["fid_boot"], quality["fid_name"]
    rows = []
    for row_key, name, key, cfa, paper in (r for r in ROWS if r[0] in consistency):
        c = consistency[row_key]
        row = {"key": row_key, "row": name, "model": key, "cfa_inference": cfa,
               fid_name: None if key == "random" else fid[key][fid_name],
               "fid_boot_se": None if key == "random" else float(fid_boot[key].std())}
        for m in ("latent", "image"):
            row[f"{m}_spsnr_db"], row[f"{m}_spsnr_se_db"] = mean_sem(c[m])
        row.update(paper_FID=paper[0], paper_latent_spsnr=paper[1], paper_image_spsnr=paper[2])
        rows.append(row)
    by_row = {r["key"]: r for r in rows}

    def compare(a, b):
        out = {"row": by_row[a]["row"], "row_key": a, "baseline": by_row[b]["row"], "baseline_key": b}
        for m in ("latent", "image"):  # mean +- SE of the per-latent differences (taken in float32, as stored)
            out[f"{m}_spsnr_delta_db"], out[f"{m}_spsnr_delta_se_db"] = mean_sem(consistency[a][m] - consistency[b][m])
        ka, kb = by_row[a]["model"], by_row[b]["model"]
        if "random" not in (ka, kb):
            out["fid_delta"] = fid[ka][fid_name] - fid[kb][fid_name]
            out["fid_delta_boot_se"] = float((fid_boot[ka] - fid_boot[kb]).std())
            out["fid_ratio"] = fid[ka][fid_name] / fid[kb][fid_name]
            out["fid_ratio_boot_se"] = float((fid_boot[ka] / fid_boot[kb]).std())
        return out

    comparisons = {f"{a}_minus_{b}": compare(a, b) for a, b in COMPARISONS if a in by_row and b in by_row}
    return {"rows": rows, "by_row": by_row, "comparisons": comparisons}


def verdicts(comparisons: dict) -> list[dict]:
    """Per comparison and metric: the difference, its SE and whether this run resolves it (``verdict``, 2 SE)."""
    out = []
    for name, c in comparisons.items():
        for metric, d, se in (("latent SPSNR", "latent_spsnr_delta_db", "latent_spsnr_delta_se_db"),
                              ("image SPSNR", "image_spsnr_delta_db", "image_spsnr_delta_se_db"),
                              ("FID", "fid_delta", "fid_delta_boot_se")):
            if d in c:
                out.append({"comparison": name, "metric": metric, "delta": c[d], "se": c[se],
                            "verdict": verdict(c[d], c[se])})
    return out


def per_step(consistency: dict) -> tuple[list[dict], dict]:
    """Figure 5: latent SPSNR after every DDIM step for the standard LDM (+ CFA) and AF-LDM, and their paired gap.
    Returns (CSV rows, gap summary)."""
    rows = []
    for row_key, _, label in STEP_PAIR:
        ps = consistency[row_key]["per_step"]
        rows += [{"model": label, "step": s + 1, "latent_spsnr_db": m, "se_db": e}
                 for s, (m, e) in enumerate(mean_sem(ps[s]) for s in range(ps.shape[0]))]
    gap_ps = consistency["af_ldm"]["per_step"] - consistency["vanilla_vae_cfa"]["per_step"]
    gap = [mean_sem(gap_ps[s]) for s in range(gap_ps.shape[0])]
    rows += [{"model": "AF-LDM minus standard LDM", "step": s + 1, "latent_spsnr_db": m, "se_db": e}
             for s, (m, e) in enumerate(gap)]
    summary = {"first_step_db": gap[0][0], "first_step_se_db": gap[0][1], "last_step_db": gap[-1][0],
               "last_step_se_db": gap[-1][1], "min_db": min(m for m, _ in gap), "max_db": max(m for m, _ in gap)}
    return rows, summary


def figure_per_step(rows: list[dict]):
    """Figure 5 from ``per_step``'s rows: both models above, their gap below (error bars: SE over latents)."""
    import matplotlib.pyplot as plt

    fig, (ax, ax_gap) = plt.subplots(2, 1, figsize=(7, 5.6), sharex=True)
    for _, _, label in STEP_PAIR:
        pts = [r for r in rows if r["model"] == label]
        ax.errorbar([r["step"] for r in pts], [r["latent_spsnr_db"] for r in pts], yerr=[r["se_db"] for r in pts],
                    fmt="o-", capsize=2, label=label)
    pts = [r for r in rows if r["model"] == "AF-LDM minus standard LDM"]
    ax_gap.errorbar([r["step"] for r in pts], [r["latent_spsnr_db"] for r in pts], yerr=[r["se_db"] for r in pts],
                    fmt="o-", capsize=2, color="k")
    ax_gap.axhline(0, color="grey", lw=0.5)
    ax.set_ylabel("latent SPSNR (dB)")
    ax.legend()
    ax_gap.set_xlabel("DDIM step")
    ax_gap.set_ylabel("AF-LDM − standard (dB)")
    return fig


def sweep_shifts(cfg: Config) -> list[tuple[float, float]]:
    """Figure 6's horizontal shifts: k/8 latent pixel, k = 1 .. ldm_sweep_eighths."""
    return [(0.0, k / 8) for k in range(1, cfg.ldm_sweep_eighths + 1)]


@torch.no_grad()
def sweep_eval(cfg: Config, inputs: Inputs, trained: dict) -> dict:
    """Figure 6: SPSNR against a horizontal shift for the VAE decoders alone (test-image latents) and for the whole
    LDM (standard + CFA, AF-LDM). Returns ``{"rows"`` (CSV: part, model, latent_shift, spsnr_db, se_db)``,
    "pan"`` (label -> ``shift_consistency`` result, for the pan)``}``."""
    sweep = sweep_shifts(cfg)
    dev, f = inputs.dev, inputs.factor
    noise = torch.randn((cfg.ldm_sweep_latents,) + inputs.latent_shape, generator=make_generator(cfg.seed + 31, dev),
                        device=dev)

    def stats(per, label, part):  # per: [shift, sample] dB
        return [{"part": part, "model": label, "latent_shift": d[1], **dict(zip(("spsnr_db", "se_db"), mean_sem(p)))}
                for d, p in zip(sweep, per)]

    rows = []
    for vae_key, label in (("vanilla", "vanilla VAE"), ("af_vae", "AF-VAE")):
        z = ldm.encode_latents(inputs.vaes[vae_key], inputs.test_images[:cfg.ldm_sweep_latents])
        z = z * inputs.scales[vae_key]
        dec = decoder(inputs, vae_key)
        ref = dec(z)
        per = []
        for d in sweep:
            di = (0.0, d[1] * f)
            mask = signal.valid_mask(ref.shape[-2:], di, device=dev)
            per.append(metrics.psnr(dec(signal.fourier_shift(z, d)), signal.fourier_shift(ref, di), mask, peak=2.0,
                                    per_sample=True))
        rows += stats(torch.stack(per).cpu(), label, "decoder")
    pan = {}
    for _, key, label in STEP_PAIR:
        pan[label] = ldm.shift_consistency(trained[key], noise, sweep, steps=cfg.ldm_sample_steps, cfa=True,
                                           decode=decoder(inputs, MODEL_VAE[key]), factor=f, schedule=cfg.ldm_schedule)
        rows += stats(pan[label]["image"].cpu(), label, "ldm")
    return {"rows": rows, "pan": pan}


def pan_frames(cfg: Config, inputs: Inputs, pan: dict) -> list[np.ndarray]:
    """The pan GIF's frames: per shift, standard LDM left and AF-LDM right; top the generated frame, bottom the
    same shifted back by the pan (still for an equivariant model). 4x nearest up-scaled uint8 (H, W, 3)."""
    frames = []
    for i, d in enumerate([(0.0, 0.0)] + sweep_shifts(cfg)):
        tiles = []
        for label in pan:
            frame = pan[label]["reference"][:1] if i == 0 else pan[label]["frames"][i - 1, :1]
            back = signal.fourier_shift(frame, (0.0, -d[1] * inputs.factor))
            tiles.append(torch.cat([frame, back], dim=-2))
        tile = torch.cat([tiles[0], torch.ones_like(tiles[0][..., :2]), tiles[1]], dim=-1)[0]
        tile = tile.repeat_interleave(4, -2).repeat_interleave(4, -1)
        frames.append(((tile.clamp(-1, 1) + 1) * 127.5).permute(1, 2, 0).to(torch.uint8).cpu().numpy())
    return frames


@torch.no_grad()
def time_sampling(cfg: Config, inputs: Inputs, trained: dict, repeats: int = 2) -> dict:
    """Best-of-``repeats`` seconds per image of one DDIM chain, plain and alias-free U-Net, without and with CFA
    (the anchored run alone; its reference run is one plain chain)."""
    def seconds(unet, cfa):
        noise = torch.randn((cfg.ldm_timing_batch,) + inputs.latent_shape, generator=make_generator(cfg.seed + 37,
                            inputs.dev), device=inputs.dev)
        best = float("inf")
        for _ in range(repeats):
            with EquivariantAttention(unet) if cfa else contextlib.nullcontext() as eq:
                if cfa:  # the reference run, untimed
                    eq.record()
                    ldm.sample(unet, noise, cfg.ldm_sample_steps, schedule=cfg.ldm_schedule)
                    eq.use()
                with Timer(inputs.dev) as t:
                    ldm.sample(unet, noise, cfg.ldm_sample_steps, schedule=cfg.ldm_schedule)
            best = min(best, t.seconds)
        return best / cfg.ldm_timing_batch

    return {f"{key}{' + CFA' if cfa else ''}": seconds(trained[key], cfa)
            for key in ("ldm_vanilla_vae", "af_ldm") for cfa in (False, True)}


def replicate(cfg: Config, inputs: Inputs, root, table: dict) -> dict:
    """Train and evaluate every model again for each further training seed, in that seed's VAE latent spaces, with
    the same evaluation noises and shifts (FID and SPSNR). Returns ``{seed: table}`` (``make_table``'s output), the
    base seed's ``table`` included. Models of a finished seed are dropped before the next one starts."""
    out = {cfg.seed: table}
    for seed in tqdm(cfg.seeds[1:], desc="further training seeds"):
        seed_inputs = load_inputs(cfg, inputs.dev, root, seed, base=inputs)
        models = train_rows(cfg, seed_inputs, root, seed)
        quality = fid_eval(cfg, seed_inputs, models["trained"])
        spsnr = spsnr_eval(cfg, seed_inputs, models["trained"])
        out[seed] = make_table(quality, spsnr["consistency"])
        del models, seed_inputs
    return out


def seed_level(cfg: Config, per_seed: dict) -> dict:
    """Every row's FID and SPSNR as mean +- standard error over training seeds (``table``) and every comparison's
    paired difference, one number per seed, summarised with ``seeds.contrast_table`` (``contrasts``, keys
    ``"<comparison>: <metric>"``; primary: ``PRIMARY``, Holm-adjusted)."""
    seeds = list(per_seed)
    first = per_seed[seeds[0]]
    fid_name = next(k for k in first["rows"][0] if k.startswith("FID["))
    table = []
    for r in first["rows"]:
        row = {"key": r["key"], "row": r["row"], "n_seeds": len(seeds)}
        for m in ("latent_spsnr_db", "image_spsnr_db", fid_name):
            if r.get(m) is None:
                continue
            sm = seed_summary([per_seed[sd]["by_row"][r["key"]][m] for sd in seeds])
            row[m], row[f"{m}_se_seeds"], row[f"{m}_per_seed"] = sm["mean"], sm["se"], sm["per_seed"]
        table.append(row)
    deltas = {}
    for name, c in first["comparisons"].items():
        for m, key in (("latent_spsnr", "latent_spsnr_delta_db"), ("image_spsnr", "image_spsnr_delta_db"),
                       ("FID", "fid_delta")):
            if key in c:
                deltas[f"{name}: {m}"] = [per_seed[sd]["comparisons"][name][key] for sd in seeds]
    return {"seeds": seeds, "table": table, "by_row": {r["key"]: r for r in table},
            "contrasts": contrast_table(deltas, PRIMARY)}


def seed_markdown(level: dict) -> str:
    """The seed-level contrasts: mean +- SE over seeds, the per-seed values, p and the verdict."""
    return contrast_markdown(level["contrasts"])


def summarise(cfg: Config, inputs: Inputs, models: dict, quality: dict, spsnr: dict, table: dict, gap: dict,
              timing: dict, level: dict) -> dict:
    """The stage's metrics (``metrics/30_af_ldm.json``): the base seed's table and comparisons (errors over
    latents) and the seed-level ones (``seed_table``, ``seed_contrasts``: errors over training seeds)."""
    dev, fid_name = inputs.dev, quality["fid_name"]
    goal = table["comparisons"]["af_ldm_minus_vanilla_vae_cfa"]  # the paper's: AF-LDM vs vanilla VAE LDM + CFA
    return {
        "profile": cfg.profile,
        "device": str(dev) + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""),
        "scale": {"dataset": cfg.ldm_dataset, "latent_shape": list(inputs.latent_shape), "vae_factor": inputs.factor,
                  "unet": list(cfg.ldm_channels), "train_steps": cfg.ldm_train_steps,
                  "finetune_steps": cfg.ldm_finetune_steps, "batch": cfg.ldm_batch, "ddim_steps": cfg.ldm_sample_steps,
                  "schedule": cfg.ldm_schedule, "stop_grad": cfg.ldm_stop_grad, "cfa_detach": cfg.ldm_cfa_detach,
                  "models": list(cfg.ldm_models), "spsnr_protocol": cfg.ldm_spsnr_protocol,
                  "fid_samples": cfg.ldm_fid_samples,
                  "spsnr_latents": cfg.ldm_spsnr_latents, "spsnr_shifts": [list(d) for d in spsnr["groups"]]},
        "conventions": f"{fid_name}: FID with the classifier stage's features for {cfg.ldm_dataset}, ± bootstrap "
                       f"standard error over {N_BOOT} resamples of samples and test images; "
                       + ("latent SPSNR peak = the target's per-sample dynamic range on the non-wrapped region; "
                          "initial noise shifted circularly on the 1/8 latent-pixel grid; "
                          if cfg.ldm_spsnr_protocol == "workbook" else
                          "the reference's protocol: latent SPSNR peak = max - min over both masked latents, initial "
                          "noise shifted with the cropped shift (zero border) on the 1/8 latent-pixel grid, the "
                          "shifted run decoded from latent * mask; ")
                       + "image SPSNR peak 2, per-sample PSNR averaged in dB, mean ± standard error over initial "
                       "latents (paired differences for comparisons); seed_table and "
                       "seed_contrasts: mean ± standard error over training seeds (a contrast paired within each seed "
                       "over the same latents and shifts), t test on seeds - 1 degrees of freedom; multiple "
                       "comparisons: " + MULTIPLE_COMPARISONS,
        "training_seeds": level["seeds"], "code_path": code_path(),
        "table": table["rows"],
        "by_row": table["by_row"],
        "comparisons": table["comparisons"],
        "seed_table": level["table"],
        "seed_by_row": level["by_row"],
        "seed_contrasts": level["contrasts"],
        "per_step_gap_af_ldm_minus_standard": gap,
        "vae_reconstruction_fid": quality["reconstruction_fid"],
        "goal": "AF-LDM image SPSNR >= LDM w/ vanilla VAE + CFA + 5 dB, FID <= 1.3 x that LDM's (paper: 28.06 vs "
                "21.69 dB, FID 19.05 vs 14.91)",
        "goal_check": {"baseline": "vanilla_vae_cfa", "image_spsnr_gain_db": goal["image_spsnr_delta_db"],
                       "image_spsnr_gain_se_db": goal["image_spsnr_delta_se_db"], "fid_ratio": goal["fid_ratio"],
                       "fid_ratio_boot_se": goal["fid_ratio_boot_se"]},
        "train_seconds": models["train_seconds"],
        "sampling_seconds_per_image": timing,
    }


def write_outputs(out_dir, summary: dict, curves: list[dict], step_rows: list[dict], sweep_rows: list[dict],
                  frames=None, figures: dict | None = None) -> None:
    """``metrics/30_af_ldm{.json,_loss.csv,_per_step.csv,_spsnr_vs_shift.csv}``, the pan GIF when ``frames`` are
    given and ``figures`` (file name -> matplotlib figure) under ``figures/30_af_ldm``."""
    save_csv(curves, out_path(out_dir, "metrics", "30_af_ldm_loss.csv"))
    save_csv(step_rows, out_path(out_dir, "metrics", "30_af_ldm_per_step.csv"))
    save_csv(sweep_rows, out_path(out_dir, "metrics", "30_af_ldm_spsnr_vs_shift.csv"))
    if frames is not None:
        save_gif(frames, out_path(out_dir, "figures", "30_af_ldm", "pan.gif"), fps=6)
    for name, fig in (figures or {}).items():
        save_figure(fig, out_path(out_dir, "figures", "30_af_ldm", name))
    save_json(summary, out_path(out_dir, "metrics", "30_af_ldm.json"))


def run(cfg: Config, device: str, out_dir) -> dict:
    """The whole stage under ``out_dir`` (inputs from its data/ and checkpoints/); returns the metrics."""
    import matplotlib.pyplot as plt

    dev = setup(cfg, device)
    inputs = load_inputs(cfg, dev, out_dir)
    models = train_rows(cfg, inputs, out_dir)
    curves = loss_curves(cfg, models["histories"])
    quality = fid_eval(cfg, inputs, models["trained"])
    spsnr = spsnr_eval(cfg, inputs, models["trained"])
    table = make_table(quality, spsnr["consistency"])
    step_rows, gap = per_step(spsnr["consistency"])
    sweep = sweep_eval(cfg, inputs, models["trained"])
    frames = pan_frames(cfg, inputs, sweep["pan"])
    timing = time_sampling(cfg, inputs, models["trained"])
    level = seed_level(cfg, replicate(cfg, inputs, out_dir, table))
    summary = summarise(cfg, inputs, models, quality, spsnr, table, gap, timing, level)
    fig = figure_per_step(step_rows)
    write_outputs(out_dir, summary, curves, step_rows, sweep["rows"], frames, {"spsnr_per_step.png": fig})
    plt.close(fig)
    return summary
