"""The ``normals`` stage (notebooks/60_normals.py): YOSO-style one-step normal estimation on procedural scenes,
standard YOSO (vanilla VAE latents) against AF-YOSO (alias-free ControlNet + U-Net, AF-VAE latents, equivariance
loss with CFA); accuracy against the VAE ceiling and a flat baseline, shift consistency under latent shifts and
re-rendered sub-pixel pans with positive controls and ceilings, paired differences. The models and scenes live in
``afcore.normals``; this module is the stage around them.

Steps, in ``run``'s order: ``render_scenes`` -> ``load_codecs`` -> ``encode_training`` -> ``vae_ceiling`` ->
``train_models`` -> ``accuracy`` -> ``flat_baseline`` -> ``shift_tests`` -> ``controls`` -> ``shift_table`` ->
``differences`` -> ``versus_references`` -> ``summarise`` -> ``write_outputs``. Inputs: ``data/natural32.pt`` (the
latent scale), ``checkpoints/vae/{vanilla,af_vae}``; outputs: ``checkpoints/normals/``, ``metrics/60_normals.json``,
``metrics/60_normals_shift.csv`` and the pan GIFs ``figures/60_normals/pan_{smooth,sharp}.gif`` (the README shows
the sharp one).
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from afcore import data, flow as FL, ldm, normals as NM, vae as VAE
from afcore.attention import EquivariantAttention
from afcore.metrics import psnr
from afcore.signal import shift as crop_shift, valid_mask
from afcore.stages.common import (ConfigError, StageConfig, mean_sem, out_path, paired_mean_sem, pick_device, to01,
                                  verdict)
from afcore.train import WEIGHT_DECAY, prepare_run_dir, train_loop
from afcore.utils import save_csv, save_gif, save_json, seed_everything

MODELS = {"standard YOSO": "vanilla", "AF-YOSO": "af_vae"}  # model -> its VAE checkpoint (and run folder)
TEXTURES = list(NM.TEXTURES)
KEYS = ["mean", "median", "under_11.25", "under_22.5", "under_30"]
# paired metrics AF-YOSO - standard, and which direction is better
BETTER = {"mean": "lower", "lat_spsnr": "higher", "lat_angle": "lower", "img_spsnr": "higher", "img_angle": "lower",
          "flicker": "lower", "we": "lower"}
CONTROL = "control: linear 1x1 predictor + 1x1 decoder"
STOP_GRAD = ("none", "shifted", "target")
TARGETS = ("absolute", "relative")
COND_INITS = ("zero", "random")  # the ControlNet's latent conditioning conv at initialisation  # the x0 target: the normal latent, or its difference from the flat normal's latent


@dataclasses.dataclass(frozen=True)
class Config(StageConfig):
    SECTIONS = ("base", "normals")
    profile: str = "cpu"
    seed: int = 0
    device: str = "auto"
    normals_size: int = 32
    normals_supersample: int = 4
    normals_light_azimuth: list[float] = (90.0, 180.0)
    normals_light_elevation: list[float] = (30.0, 70.0)
    normals_bump_scale: float = 1.0
    normals_albedo_contrast: float = 1.0
    normals_code: str = "xy"
    normals_target: str = "absolute"
    normals_cond_init: str = "zero"
    normals_channels: list[int] = (32, 64)
    normals_cross_dim: int = 32
    normals_steps: int = 300
    normals_batch: int = 32
    normals_lr: float = 0.001
    normals_ema_decay: float = 0.99
    normals_p_zero: float = 0.4
    normals_train_t: str = "fixed"
    normals_eq_weight: float = 1.0
    normals_stop_grad: str = "none"
    normals_cfa_detach: bool = True
    normals_decoded_weight: float = 0.0
    normals_freeze_base: bool = False
    normals_pretrained_unet: str = ""
    normals_pretrained_af_unet: str = ""
    normals_train_scenes: int = 1024
    normals_test_scenes: int = 32
    normals_shift_steps: int = 16

    def check(self) -> None:
        for key, allowed in (("normals_code", NM.NORMAL_CODES), ("normals_train_t", NM.TRAIN_T),
                             ("normals_stop_grad", STOP_GRAD), ("normals_target", TARGETS),
                             ("normals_cond_init", COND_INITS)):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"normals.{key} must be one of {list(allowed)}, got {getattr(self, key)!r}")
        if self.normals_size < 4:
            raise ConfigError(f"normals.normals_size must be >= 4 (and a multiple of the VAE factor), got "
                              f"{self.normals_size}")
        for key in ("normals_supersample", "normals_cross_dim", "normals_batch", "normals_shift_steps"):
            if getattr(self, key) < 1:
                raise ConfigError(f"normals.{key} must be >= 1, got {getattr(self, key)}")
        if self.normals_train_scenes < 2:
            raise ConfigError(f"normals.normals_train_scenes must be >= 2 (half smooth, half sharp), got "
                              f"{self.normals_train_scenes}")
        if self.normals_test_scenes < 2:
            raise ConfigError(f"normals.normals_test_scenes must be >= 2 (standard errors over test scenes), got "
                              f"{self.normals_test_scenes}")
        if len(self.normals_channels) < 2 or min(self.normals_channels) < 1:
            raise ConfigError(f"normals.normals_channels must list >= 2 positive widths, got "
                              f"{list(self.normals_channels)}")
        lo, hi = (list(self.normals_light_azimuth) + [None, None])[:2]
        if len(self.normals_light_azimuth) != 2 or not lo <= hi <= lo + 360:
            raise ConfigError(f"normals.normals_light_azimuth must be [low, high] degrees with low <= high <= "
                              f"low + 360, got {list(self.normals_light_azimuth)}")
        lo, hi = (list(self.normals_light_elevation) + [None, None])[:2]
        if len(self.normals_light_elevation) != 2 or not 0 <= lo <= hi <= 90:
            raise ConfigError(f"normals.normals_light_elevation must be [low, high] degrees with 0 <= low <= high <= "
                              f"90, got {list(self.normals_light_elevation)}")
        if not self.normals_bump_scale > 0:
            raise ConfigError(f"normals.normals_bump_scale must be > 0, got {self.normals_bump_scale}")
        if not 0 <= self.normals_albedo_contrast <= 1:
            raise ConfigError(f"normals.normals_albedo_contrast must be in [0, 1], got {self.normals_albedo_contrast}")
        if self.normals_steps < 0:
            raise ConfigError(f"normals.normals_steps must be >= 0, got {self.normals_steps}")
        if not self.normals_lr > 0:
            raise ConfigError(f"normals.normals_lr must be > 0, got {self.normals_lr}")
        if not 0 < self.normals_ema_decay < 1:
            raise ConfigError(f"normals.normals_ema_decay must be in (0, 1), got {self.normals_ema_decay}")
        if not 0 <= self.normals_p_zero <= 1:
            raise ConfigError(f"normals.normals_p_zero must be in [0, 1], got {self.normals_p_zero}")
        if self.normals_eq_weight < 0:
            raise ConfigError(f"normals.normals_eq_weight must be >= 0, got {self.normals_eq_weight}")
        if not self.normals_decoded_weight >= 0:
            raise ConfigError(f"normals.normals_decoded_weight must be >= 0, got {self.normals_decoded_weight}")
        if not isinstance(self.normals_cfa_detach, bool):
            raise ConfigError(f"normals.normals_cfa_detach must be true or false, got {self.normals_cfa_detach!r}")


# ---------------------------------------------------------------------------------------------------------- scenes
def scenes(cfg: Config, texture: str, n: int, seed: int, device) -> dict:
    """``n`` random scenes of one albedo kind from a generator on ``device`` seeded with ``seed``."""
    g = torch.Generator(device=torch.device(device)).manual_seed(seed)
    return NM.random_scene(g, texture, n, cfg.normals_size, light_azimuth=cfg.normals_light_azimuth,
                           light_elevation=cfg.normals_light_elevation, bump_scale=cfg.normals_bump_scale,
                           albedo_contrast=cfg.normals_albedo_contrast)


def render(cfg: Config, scene: dict, offset=(0.0, 0.0), batch: int = 64):
    """(images, normals) of ``scene`` moved by ``offset`` px, rendered in batches of ``batch`` scenes."""
    n = scene["amp"].shape[0]
    parts = [NM.render({k: v[i:i + batch] for k, v in scene.items()}, cfg.normals_size, offset,
                       cfg.normals_supersample) for i in range(0, n, batch)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def render_scenes(cfg: Config, device) -> dict:
    """Training scenes (half smooth, half sharp; seeds seed * 1000 + 11 + i) and ``normals_test_scenes`` test scenes
    per albedo kind (seeds seed * 1000 + 101 + i): ``train_img``, ``train_nrm``, ``test_scene`` (descriptions, to
    re-render at offsets), ``test`` (texture -> (images, normals)) and ``render_seconds`` ({"wall_s", "cpu_s"})."""
    t0, c0 = time.perf_counter(), time.process_time()
    half = cfg.normals_train_scenes // 2
    train = [render(cfg, scenes(cfg, tex, half, cfg.seed * 1000 + 11 + i, device)) for i, tex in enumerate(TEXTURES)]
    test_scene = {tex: scenes(cfg, tex, cfg.normals_test_scenes, cfg.seed * 1000 + 101 + i, device)
                  for i, tex in enumerate(TEXTURES)}
    test = {tex: render(cfg, sc) for tex, sc in test_scene.items()}
    return {"train_img": torch.cat([t[0] for t in train]), "train_nrm": torch.cat([t[1] for t in train]),
            "test_scene": test_scene, "test": test,
            "render_seconds": {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}}


# --------------------------------------------------------------------------------------------------- latent spaces
class Codec:
    """A VAE with the af_ldm stage's latent scale (1 / std of the natural32 training images' posterior means)."""

    def __init__(self, vae, natural: torch.Tensor, device):
        self.vae, self.device = vae, torch.device(device)
        self.scale = float(1 / ldm.encode_latents(vae, natural.to(self.device)).std())
        self.offset = torch.zeros((), device=self.device)  # added to a model's output before decoding

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return ldm.encode_latents(self.vae, x.to(self.device), batch=256) * self.scale

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.vae.decode(z[i:i + 256] / self.scale).sample for i in range(0, len(z), 256)])

    def decode_grad(self, pred: torch.Tensor) -> torch.Tensor:
        """A model's prediction (offset not yet added) -> decoded image, with gradient (the decoded loss)."""
        return self.vae.decode((pred + self.offset) / self.scale).sample


def load_codecs(cfg: Config, device, root) -> dict:
    """model -> Codec (its VAE from ``checkpoints/vae``), plus ``factor`` (the AF-VAE's down-sampling factor)."""
    from diffusers import AutoencoderKL

    from afcore.surgery import load_alias_free

    dev, root = torch.device(device), Path(root)
    nat = data.load_prepared("natural32", root=str(root / "data"))["train"]
    codecs = {name: Codec(load_alias_free(AutoencoderKL, root / "checkpoints/vae" / key).eval().requires_grad_(False)
                          .to(dev), nat, dev) for name, key in MODELS.items()}
    factor = VAE.factor(codecs["AF-YOSO"].vae)
    if cfg.normals_size % factor:
        raise ConfigError(f"normals.normals_size must be a multiple of the VAE factor {factor}, got "
                          f"{cfg.normals_size}")
    if cfg.normals_target == "relative":
        for c in codecs.values():
            c.offset = flat_latent(cfg, c)
    return {"codecs": codecs, "factor": factor}


def flat_latent(cfg: Config, codec: Codec) -> torch.Tensor:
    """(1, 4, h, w): the latent of the flat normal map (every normal (0, 0, 1)) in ``normals_code``. With
    ``normals_target: relative`` the models predict the normal latent minus this one, so a model whose output is
    zero (as ours are at initialisation: zero-initialised ControlNet outputs aside, the U-Net's output is small)
    starts at the flat baseline instead of at the decoder's reading of a zero latent."""
    flat = torch.zeros(1, 3, cfg.normals_size, cfg.normals_size, device=codec.device)
    flat[:, 2] = 1
    return codec.encode(NM.normals_to_image(flat, cfg.normals_code))


def encode_training(cfg: Config, codecs: dict, scenes_: dict) -> dict:
    """model -> {"cond": latents of the training images, "target": latents of their normal maps (``normals_code``)
    minus the codec's ``offset`` (the flat normal's latent with ``normals_target: relative``, else 0), "image": the
    normal maps in ``normals_code`` (the decoded loss's target)}."""
    image = NM.normals_to_image(scenes_["train_nrm"], cfg.normals_code)
    return {name: {"cond": c.encode(scenes_["train_img"]), "target": c.encode(image) - c.offset,
                   "image": image.to(c.device)} for name, c in codecs.items()}


def vae_ceiling(cfg: Config, codecs: dict, test: dict, device) -> tuple[dict, dict]:
    """(ceiling, ceiling_by_code): the normal metrics of dec(enc(n)) per model and albedo, and the mean angular error of
    that round trip on the smooth test scenes for every normal code, beside the flat-normal baseline."""
    dev = torch.device(device)
    ceiling = {name: {tex: NM.normal_metrics(NM.image_to_normals(c.decode(c.encode(NM.normals_to_image(
        test[tex][1], cfg.normals_code))), cfg.normals_code), test[tex][1].to(dev)) for tex in TEXTURES}
        for name, c in codecs.items()}
    smooth = test["smooth"][1]
    by_code = {code: {name: float(NM.angular_error(NM.image_to_normals(c.decode(c.encode(
        NM.normals_to_image(smooth, code))), code), smooth.to(dev)).mean()) for name, c in codecs.items()}
        for code in NM.NORMAL_CODES}
    flat_n = torch.zeros_like(smooth)
    flat_n[:, 2] = 1
    by_code["flat normals (no VAE)"] = float(NM.angular_error(flat_n, smooth).mean())
    return ceiling, by_code


def _split_frequencies(z: torch.Tensor, cutoff: float = 0.25) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high): ``z`` split by a Fourier mask at ``cutoff`` cycles per latent pixel per axis (low + high = z)."""
    fy, fx = (torch.fft.fftfreq(n, device=z.device).abs() for n in z.shape[-2:])
    mask = ((fy[:, None] <= cutoff) & (fx[None, :] <= cutoff)).to(z.dtype)
    low = torch.fft.ifft2(torch.fft.fft2(z) * mask).real
    return low, z - low


def decoder_sensitivity(cfg: Config, codecs: dict, test: dict, rms: float = 0.5) -> dict:
    """model -> how much a latent error costs after decoding, on the smooth test scenes: the mean angular error of
    dec(enc(n) + e) for a fixed random error ``e`` of RMS ``rms`` (scaled-latent units) kept to low latent
    frequencies (<= 1/4 cycle/px per axis: the smooth errors a regression makes) or to the high ones, beside
    dec(enc(n)) itself, and the share of the normal latents' energy (minus the codec's offset) at low frequencies.
    The same ``e`` for both VAEs: it shows what the same latent MSE costs in each latent space."""
    smooth = test["smooth"][1]
    lat = {name: c.encode(NM.normals_to_image(smooth, cfg.normals_code)) for name, c in codecs.items()}
    g = torch.Generator(device="cpu").manual_seed(cfg.seed + 7)
    low_e, high_e = _split_frequencies(torch.randn(next(iter(lat.values())).shape, generator=g, device="cpu"))
    out = {}
    for name, c in codecs.items():
        z, zc = lat[name], lat[name] - c.offset

        def err(latent):
            return float(NM.angular_error(NM.image_to_normals(c.decode(latent), cfg.normals_code),
                                          smooth.to(c.device)).mean())

        out[name] = {"roundtrip_deg": err(z), "low_error_deg": err(z + rms * (low_e / low_e.std()).to(c.device)),
                     "high_error_deg": err(z + rms * (high_e / high_e.std()).to(c.device)),
                     "low_frequency_energy_share": float((_split_frequencies(zc)[0] ** 2).sum() / (zc ** 2).sum())}
    return out


# -------------------------------------------------------------------------------------------------------- training
def _resolve(source: str, root) -> str:
    """A relative local folder is read from the workspace ``root``; hub ids and absolute paths pass through."""
    local = Path(root) / source
    return str(local) if source and local.exists() else source


def build(cfg: Config, name: str, factor: int, device, root):
    """(YOSO model on ``device``, the U-Net's init source): fresh networks seeded with ``seed`` or a pretrained
    U-Net (``"standin"``: a tiny random one saved under ``checkpoints/normals/standin_unet``)."""
    af = name == "AF-YOSO"
    source = cfg.normals_pretrained_af_unet if af else cfg.normals_pretrained_unet
    if source == "standin":
        torch.manual_seed(cfg.seed)
        unet, _ = NM.yoso_models(cfg.normals_channels, 4, cfg.normals_cross_dim, alias_free=False)
        source = "checkpoints/normals/standin_unet"  # the fingerprint's name for it, relative to the workspace
        unet.save_pretrained(Path(root) / source)
    torch.manual_seed(cfg.seed)
    unet, cn = NM.yoso_models(cfg.normals_channels, 4, cfg.normals_cross_dim, alias_free=af,
                              sample_size=cfg.normals_size // factor,
                              pretrained_unet=_resolve(source, root),
                              param="normals_pretrained_af_unet" if af else "normals_pretrained_unet",
                              zero_cond=cfg.normals_cond_init == "zero")
    model = NM.YOSO(unet, cn).to(device)
    if cfg.normals_freeze_base:
        for n_, p in model.unet.named_parameters():
            p.requires_grad_(n_.startswith(("up_blocks", "conv_norm_out", "conv_out")))
    return model, source


def train_model(cfg: Config, name: str, latents: dict, codecs: dict, factor: int, device, root):
    """Train ``name`` (AdamW, EMA, resumable under ``checkpoints/normals/<vae>``; AF-YOSO with the equivariance
    loss); the final EMA model is saved under ``.../final``. Returns (model in eval mode, history, seconds: wall
    clock ``wall_s`` and this process's CPU time ``cpu_s``, which counts every thread's work)."""
    dev = torch.device(device)
    model, source = build(cfg, name, factor, dev, root)
    eq = cfg.normals_eq_weight if name == "AF-YOSO" else 0.0
    cond, target, image = latents[name]["cond"], latents[name]["target"], latents[name]["image"]
    fp = dict(model=name, channels=cfg.normals_channels, steps=cfg.normals_steps, batch=cfg.normals_batch,
              lr=cfg.normals_lr, ema=cfg.normals_ema_decay, p_zero=cfg.normals_p_zero, train_t=cfg.normals_train_t,
              eq=eq, stop_grad=cfg.normals_stop_grad, cfa_detach=cfg.normals_cfa_detach, weight_decay=WEIGHT_DECAY,
              freeze=cfg.normals_freeze_base, init=source,
              scenes=cfg.normals_train_scenes, size=cfg.normals_size, supersample=cfg.normals_supersample,
              light=cfg.normals_light_azimuth, elevation=cfg.normals_light_elevation, bumps=cfg.normals_bump_scale,
              albedo=cfg.normals_albedo_contrast, seed=cfg.seed, scale=round(codecs[name].scale, 6),
              code=cfg.normals_code, target=cfg.normals_target, cond_init=cfg.normals_cond_init,
              decoded=cfg.normals_decoded_weight)
    run_dir = prepare_run_dir(Path(root) / "checkpoints/normals" / MODELS[name], fp)
    seed = cfg.seed

    def get_batch(step):  # indices drawn on the CPU (as the stage always has: the batches stay the same)
        g = torch.Generator(device="cpu").manual_seed(seed * 100003 + step)
        i = torch.randint(0, len(cond), (cfg.normals_batch,), generator=g, device="cpu").to(dev)
        return cond[i], target[i], image[i], torch.tensor(seed * 100003 + step, device=dev)

    def loss_fn(m, batch, step):
        c, tgt, img, s = batch
        g = torch.Generator(device=dev).manual_seed(int(s) + 1)
        return NM.yoso_loss(m, c, tgt, g, p_zero=cfg.normals_p_zero, train_t=cfg.normals_train_t, eq_weight=eq,
                            stop_grad=cfg.normals_stop_grad, cfa_detach=cfg.normals_cfa_detach,
                            decoded_weight=cfg.normals_decoded_weight, decode=codecs[name].decode_grad,
                            target_image=img)

    t0, c0 = time.perf_counter(), time.process_time()
    m, ema, hist = train_loop(model, loss_fn, get_batch, steps=cfg.normals_steps, lr=cfg.normals_lr,
                              ckpt_dir=run_dir, ckpt_every=max(1, cfg.normals_steps // 3),
                              ema_decay=cfg.normals_ema_decay, weight_decay=WEIGHT_DECAY, device=str(dev), desc=name,
                              log_csv=run_dir / "loss.csv")
    final = (ema or m).to(dev).eval()
    NM.save_yoso(final, run_dir / "final")
    return final, hist, {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}


def train_models(cfg: Config, latents: dict, codecs: dict, factor: int, device, root) -> dict:
    """Both models in turn: ``models``, ``histories``, ``seconds`` (name -> ...; seconds: {"wall_s", "cpu_s"})."""
    out = {"models": {}, "histories": {}, "seconds": {}}
    for name in MODELS:
        out["models"][name], out["histories"][name], out["seconds"][name] = train_model(
            cfg, name, latents, codecs, factor, device, root)
    return out


# -------------------------------------------------------------------------------------------------------- accuracy
@torch.no_grad()
def predict(cfg: Config, model, codec: Codec, cond: torch.Tensor, ref: torch.Tensor | None = None, batch: int = 64):
    """Decoded normal maps of ``cond`` (scaled latents). With ``ref`` (B latents, cond = B contiguous groups), the
    attention of both networks is anchored on the pass over ``ref`` (CFA), the protocol of the shift metrics."""
    out = []
    per = len(cond) // (len(ref) if ref is not None else len(cond))
    step = max(1, batch // per)
    for i in range(0, len(cond) // per, step):
        c = cond[i * per:(i + step) * per]
        with EquivariantAttention(model) as eq:
            if ref is not None:
                eq.record()
                model(ref[i:i + step])
                eq.use()
            out.append(model(c))
    return NM.image_to_normals(codec.decode(torch.cat(out) + codec.offset), cfg.normals_code)


def accuracy(cfg: Config, models: dict, codecs: dict, test: dict, device) -> dict:
    """model -> albedo -> the per-image normal metrics of its prediction on the test scenes."""
    dev = torch.device(device)
    return {name: {tex: NM.normal_metrics(predict(cfg, models[name], codecs[name], codecs[name].encode(test[tex][0])),
                                          test[tex][1].to(dev)) for tex in TEXTURES} for name in MODELS}


def flat_baseline(test: dict, device) -> dict:
    """albedo -> the metrics of the trivial prediction (0, 0, 1) everywhere (exactly equivariant, learns nothing)."""
    dev, flat = torch.device(device), {}
    for tex in TEXTURES:
        up = torch.zeros_like(test[tex][1], device=dev)
        up[:, 2] = 1.0
        flat[tex] = NM.normal_metrics(up, test[tex][1].to(dev))
    return flat


def accuracy_rows(acc: dict, ceiling: dict, flat: dict) -> list:
    """(row name, albedo, metrics, mean error minus the flat baseline's (mean, s.e.) paired over images) for the
    accuracy table: per albedo the flat baseline (the input-side reference), each VAE's ceiling (dec(enc(n)): the
    best a latent model can reach) and each model."""
    rows = []
    for tex in TEXTURES:
        rows.append(("flat normals (0, 0, 1)", tex, flat[tex], (0.0, 0.0)))
        for name in MODELS:
            rows.append((f"{MODELS[name]} VAE ceiling", tex, ceiling[name][tex],
                         paired_mean_sem(ceiling[name][tex]["mean"], flat[tex]["mean"])))
        for name in MODELS:
            rows.append((name, tex, acc[name][tex], paired_mean_sem(acc[name][tex]["mean"], flat[tex]["mean"])))
    return rows


# ------------------------------------------------------------------------------------------------ shift consistency
def consistency(moved: torch.Tensor, ref: torch.Tensor, ds) -> tuple[torch.Tensor, torch.Tensor]:
    """SPSNR (dB, peak 2) and mean angle (deg) of ``moved`` (B, K, 3, H, W) against the cropped shifts of ``ref``
    (B, 3, H, W) by the image shifts ``ds``, per image and shift: two (B, K) tensors."""
    sp, an = [], []
    for j, d in enumerate(ds):
        target, m = crop_shift(ref, d, mode="crop")
        m = m * valid_mask(ref.shape[-2:], d, device=ref.device)
        sp.append(psnr(moved[:, j] * m, target * m, m, 2.0, per_sample=True))
        ang = NM.angular_error(moved[:, j], target)
        an.append((ang * m).flatten(1).sum(1) / m.sum())
    return torch.stack(sp, 1), torch.stack(an, 1).double()


def shifts(cfg: Config) -> tuple[list, list]:
    """(latent shifts (0, k/8) latent px, pans (0, k/4) image px), k = 1..normals_shift_steps."""
    k_max = cfg.normals_shift_steps
    return [(0.0, k / 8) for k in range(1, k_max + 1)], [(0.0, k / 4) for k in range(1, k_max + 1)]


def _quarter_px_flow(n: int, size: int, device) -> torch.Tensor:
    flow = torch.zeros(n, 2, size, size, device=device)
    flow[:, 1] = 0.25
    return flow


def shift_tests(cfg: Config, models: dict, codecs: dict, scenes_: dict, factor: int, device) -> tuple[dict, dict]:
    """Both protocols per model and albedo, CFA anchored on the unshifted pass: latent shifts of the condition
    (SPSNR, angle), re-rendered pans (SPSNR, angle against the shifted unshifted prediction; per-frame error against
    the ground truth, flicker, warping error). Returns (shift_res[(row, albedo)], pans[(model, albedo)] = (images,
    ground truths, predictions), both (B, K+1, 3, S, S))."""
    dev, S, K = torch.device(device), cfg.normals_size, cfg.normals_shift_steps
    lat_shifts, img_shifts = shifts(cfg)
    test, test_scene = scenes_["test"], scenes_["test_scene"]
    shift_res, pans = {}, {}
    for name in MODELS:
        model, codec = models[name], codecs[name]
        for tex in tqdm(TEXTURES, desc=f"{name} shift tests", leave=False):
            z0 = codec.encode(test[tex][0])
            zk = torch.stack([crop_shift(z0, d, mode="crop")[0] for d in lat_shifts], 1).flatten(0, 1)
            n0 = predict(cfg, model, codec, z0)
            nk = predict(cfg, model, codec, zk, ref=z0).reshape(len(z0), K, 3, S, S)
            sp_l, an_l = consistency(nk, n0, [(a * factor, b * factor) for a, b in lat_shifts])
            frames = [render(cfg, test_scene[tex], d) for d in [(0.0, 0.0)] + img_shifts]
            imgs = torch.stack([x for x, _ in frames], 1).to(dev)  # (B, K+1, 3, S, S)
            gts = torch.stack([n for _, n in frames], 1).to(dev)
            zi = codec.encode(imgs.flatten(0, 1))
            pan = predict(cfg, model, codec, zi, ref=z0).reshape(imgs.shape)
            sp_i, an_i = consistency(pan[:, 1:], pan[:, 0], img_shifts)
            err = torch.stack([NM.angular_error(pan[:, j], gts[:, j]).flatten(1).mean(1) for j in range(K + 1)], 1)
            flow = _quarter_px_flow(len(imgs), S, dev)
            we = torch.stack([FL.warp_error(pan[:, j + 1], pan[:, j], flow) for j in range(K)], 1)
            shift_res[name, tex] = {"lat_spsnr": sp_l, "lat_angle": an_l, "img_spsnr": sp_i, "img_angle": an_i,
                                    "frame_err": err.double(), "flicker": err.double().std(1), "we": we.double()}
            pans[name, tex] = (imgs, gts, pan)
    return shift_res, pans


def controls(cfg: Config, codecs: dict, scenes_: dict, pans: dict, factor: int, device, shift_res: dict) -> dict:
    """Adds to ``shift_res`` the latent protocol's positive control (a linear 1x1 predictor + 1x1 decoder, exactly
    equivariant) and the image protocol's ceilings (the ground-truth normals and the input image run through the
    same comparison); returns ``shift_res``."""
    dev, S, K = torch.device(device), cfg.normals_size, cfg.normals_shift_steps
    lat_shifts, img_shifts = shifts(cfg)
    torch.manual_seed(cfg.seed)
    ctrl = NM.PointwiseControl(device=dev).eval()
    for tex in TEXTURES:
        with torch.no_grad():
            z0 = codecs["AF-YOSO"].encode(scenes_["test"][tex][0])
            dec0 = ctrl.decoder(ctrl(z0))
            zk = torch.stack([crop_shift(z0, d, mode="crop")[0] for d in lat_shifts], 1)
            deck = ctrl.decoder(ctrl(zk.flatten(0, 1))).reshape(len(z0), K, 3, S // factor, S // factor)
        sp_c, an_c = consistency(deck, dec0, lat_shifts)
        imgs, gts, _ = pans["AF-YOSO", tex]
        sp_g, an_g = consistency(gts[:, 1:], gts[:, 0], img_shifts)
        sp_x, _ = consistency(imgs[:, 1:], imgs[:, 0], img_shifts)
        flow = _quarter_px_flow(len(imgs), S, dev)
        shift_res[CONTROL, tex] = {"lat_spsnr": sp_c, "lat_angle": an_c}
        shift_res["ceiling: ground-truth normals", tex] = {
            "img_spsnr": sp_g, "img_angle": an_g, "frame_err": torch.zeros_like(sp_g),
            "flicker": torch.zeros(len(sp_g), device=dev, dtype=torch.float64),
            "we": torch.stack([FL.warp_error(gts[:, j + 1], gts[:, j], flow) for j in range(K)], 1).double()}
        shift_res["ceiling: input image (identity model)", tex] = {"img_spsnr": sp_x}
    return shift_res


def _per_image(v: torch.Tensor) -> torch.Tensor:
    return v.mean(1) if v.ndim == 2 else v  # per image: averaged over shifts first


def shift_table(shift_res: dict) -> list:
    """One row per (row, albedo): each metric's mean +- s.e. over test images (per image averaged over shifts)."""
    return [{"row": row, "albedo": tex, **{k: mean_sem(_per_image(v)) for k, v in r.items()}}
            for (row, tex), r in shift_res.items()]


# ------------------------------------------------------------------------------------------------------ comparison
def differences(shift_res: dict, acc: dict) -> list:
    """Per albedo and metric of ``BETTER``: AF-YOSO minus standard, paired over test images (each averaged over
    shifts), mean +- s.e., and the verdict (resolved beyond 2 s.e., then which model is better)."""
    def metric(name, tex, key):
        r = shift_res[name, tex]
        return _per_image(r[key] if key in r else acc[name][tex][key])

    diffs = []
    for tex in TEXTURES:
        for key, better in BETTER.items():
            m, s = paired_mean_sem(metric("AF-YOSO", tex, key), metric("standard YOSO", tex, key))
            v = verdict(m, s)
            word = ("not resolved (|diff| <= 2 s.e.)" if v == "not resolved" else
                    "AF-YOSO better" if v == better else "standard better")
            diffs.append({"albedo": tex, "metric": key, "af_minus_standard": (m, s), "verdict": word})
    return diffs


def versus_references(acc: dict, ceiling: dict, flat: dict) -> list:
    """Does each model beat the flat prediction, and how far is it from its VAE's ceiling? (paired over images;
    then each VAE ceiling against the flat prediction: how much a latent model could gain at most)."""
    versus = []
    for name in MODELS:
        for tex in TEXTURES:
            for ref_name, ref in (("flat normals", flat[tex]), ("VAE ceiling", ceiling[name][tex])):
                m, s_ = paired_mean_sem(acc[name][tex]["mean"], ref["mean"])
                v = verdict(m, s_)
                word = "not resolved from" if v == "not resolved" else v
                versus.append({"model": name, "albedo": tex, "reference": ref_name, "diff_deg": (m, s_),
                               "statement": f"{name} ({tex}): mean angular error {word} "
                                            f"{'than ' if word != 'not resolved from' else ''}"
                                            f"{ref_name} ({m:+.2f} ± {s_:.2f} deg)"})
    for name in MODELS:
        for tex in TEXTURES:
            m, s_ = paired_mean_sem(ceiling[name][tex]["mean"], flat[tex]["mean"])
            versus.append({"model": f"{MODELS[name]} VAE ceiling", "albedo": tex, "reference": "flat normals",
                           "diff_deg": (m, s_), "statement": f"{MODELS[name]} VAE ceiling ({tex}): mean angular error "
                                                             f"{m:+.2f} ± {s_:.2f} deg against flat normals"})
    return versus


def shift_gap(diffs: dict) -> dict:
    """metric -> albedo -> AF minus standard (mean, s.e.) for the headline shift metrics."""
    return {key: {tex: next(d["af_minus_standard"] for d in diffs if d["albedo"] == tex and d["metric"] == key)
                  for tex in TEXTURES} for key in ("lat_spsnr", "img_spsnr", "flicker")}


def curve_rows(shift_res: dict, k_max: int) -> list:
    """Per row, albedo and k: the shift metrics averaged over images (NaN where a row does not measure one)."""
    curve = []
    for (row, tex), r in shift_res.items():
        for k in range(k_max):
            item = {"row": row, "albedo": tex, "k": k + 1, "latent_shift": (k + 1) / 8, "pan_px": (k + 1) / 4}
            for key in ("lat_spsnr", "lat_angle", "img_spsnr", "img_angle"):
                item[key] = float(r[key][:, k].mean()) if key in r else float("nan")
            curve.append(item)
    return curve


def differences_from_reference(cfg: Config) -> list:
    """Where this run's settings depart from the paper / its reference code, each with the reason (README)."""
    out = ["procedural scenes with analytic normals, networks trained from scratch (the paper fine-tunes "
           "(AF-)Stable Diffusion on real normal data)"]
    if cfg.normals_code != "rgb":
        out.append(f"normal code {cfg.normals_code!r} (the reference encodes the unit normal as RGB): the small VAEs "
                   "reproduce RGB normals worse than flat normals")
    if cfg.normals_target == "relative":
        out.append("relative x0 target (the normal latent minus the flat normal's latent): a zero output is flat")
    if cfg.normals_cond_init == "random":
        out.append("random conditioning-conv init (the reference's is zero, to protect a pretrained U-Net)")
    if cfg.normals_decoded_weight > 0:
        out.append(f"loss = latent x0 MSE + {cfg.normals_decoded_weight:g} x MSE of the decoded normal-code image, "
                   "both models (the reference trains on the latent MSE only): the AF-VAE's decoder turns the same "
                   "latent error into a several times larger angular error, and latent-only training left AF-YOSO "
                   "at the flat baseline")
    return out


def summarise(cfg: Config, factor: int, acc: dict, ceiling: dict, ceiling_by_code: dict, flat: dict, versus: list,
              table: list, diffs: list, train_seconds: dict, render_seconds: dict, stage_wall_s: float,
              codecs: dict, sensitivity: dict | None = None) -> dict:
    """The metrics dict of ``metrics/60_normals.json``; ``stage_wall_s``: wall seconds from the stage's start to
    here (everything but writing the outputs)."""
    S = cfg.normals_size
    return {
        "profile": cfg.profile,
        "scale": {"size": S, "latent": [4, S // factor, S // factor], "channels": cfg.normals_channels,
                  "steps": cfg.normals_steps, "batch": cfg.normals_batch,
                  "train_scenes": 2 * (cfg.normals_train_scenes // 2),
                  "test_scenes_per_albedo": cfg.normals_test_scenes, "shift_steps": cfg.normals_shift_steps,
                  "supersample": cfg.normals_supersample, "train_t": cfg.normals_train_t,
                  "eq_weight": cfg.normals_eq_weight, "pretrained_unet": cfg.normals_pretrained_unet,
                  "pretrained_af_unet": cfg.normals_pretrained_af_unet, "normals_code": cfg.normals_code},
        "conventions": "angular error = arccos of the cosine between normalised vectors, degrees; per image mean/"
                       "median/share under 11.25/22.5/30 deg; SPSNR peak 2 on decoded normal maps in [-1, 1], per "
                       "image over the valid region of a cropped Fourier shift, averaged over shifts in dB; latent "
                       "shifts k/8 latent px, pans k/4 image px (re-rendered, exact ground truth), horizontal, k = "
                       "1..K; CFA anchored on the unshifted pass; flicker = std over the K+1 pan frames of the "
                       "per-frame mean angular error; WE = consecutive-frame warping error with the exact 1/4 px "
                       "flow; mean ± s.e. over test images; the paper reports no numbers for this task",
        "differences": differences_from_reference(cfg),
        "accuracy": {n: {t: {k: mean_sem(v) for k, v in acc[n][t].items()} for t in TEXTURES} for n in MODELS},
        "vae_ceiling": {n: {t: {k: mean_sem(v) for k, v in ceiling[n][t].items()} for t in TEXTURES} for n in MODELS},
        "vae_ceiling_by_code_smooth_mean_deg": ceiling_by_code,
        "decoder_sensitivity_smooth": sensitivity or {},
        "flat_baseline": {t: {k: mean_sem(v) for k, v in flat[t].items()} for t in TEXTURES},
        "accuracy_vs_references": versus,
        "shift": table,
        "af_minus_standard": diffs,
        "seconds": {"what": "wall_s = wall-clock seconds (time.perf_counter); cpu_s = this process's CPU seconds "
                            "(time.process_time, all threads together: not a duration)",
                    "stage_wall_s": stage_wall_s, "train": train_seconds, "render": render_seconds},
        "scales": {name: c.scale for name, c in codecs.items()},
    }


# ------------------------------------------------------------------------------------------ the README's pan GIFs
def pan_frames(pans: dict, tex: str, k_max: int) -> list:
    """One test scene panned by 1/4 px per frame: input | ground truth | standard | AF-YOSO | the two models' shift
    residuals |prediction(delta) - shifted prediction(0)| x 4, normals shown as colours."""
    imgs, gts, p_std = pans["standard YOSO", tex]
    p_af = pans["AF-YOSO", tex][2]
    frames = []
    for j in range(k_max + 1):
        d = (0.0, j / 4)
        res = [((p[0, j] - crop_shift(p[0, 0:1], d, mode="crop")[0][0]) *
                crop_shift(p[0, 0:1], d, mode="crop")[1]).abs() * 4 - 1 for p in (p_std, p_af)]
        panel = [imgs[0, j], gts[0, j], p_std[0, j], p_af[0, j], *res]
        row = np.concatenate([np.pad(to01(x), ((1, 1), (1, 1), (0, 0)), constant_values=1) for x in panel], 1)
        frames.append(np.kron(row, np.ones((4, 4, 1))))
    return frames


def write_outputs(out_dir, summary: dict, curve: list, pans: dict, k_max: int) -> dict:
    """``metrics/60_normals.json``, ``metrics/60_normals_shift.csv`` and ``figures/60_normals/pan_<albedo>.gif``;
    returns ``summary``."""
    save_json(summary, out_path(out_dir, "metrics/60_normals.json"))
    save_csv(curve, out_path(out_dir, "metrics/60_normals_shift.csv"))
    for tex in TEXTURES:
        save_gif(pan_frames(pans, tex, k_max), out_path(out_dir, f"figures/60_normals/pan_{tex}.gif"), fps=4)
    return summary


# ------------------------------------------------------------------------------------------------------------- run
def run(cfg: Config, device: str = "auto", out_dir=".") -> dict:
    """The whole stage: inputs from ``out_dir/data`` and ``out_dir/checkpoints``; writes the stage's outputs under
    ``out_dir``; returns the metrics dict."""
    t0 = time.perf_counter()
    seed_everything(cfg.seed)
    dev = pick_device(device, cfg.deterministic)
    scenes_ = render_scenes(cfg, dev)
    loaded = load_codecs(cfg, dev, out_dir)
    codecs, factor = loaded["codecs"], loaded["factor"]
    latents = encode_training(cfg, codecs, scenes_)
    ceiling, ceiling_by_code = vae_ceiling(cfg, codecs, scenes_["test"], dev)
    sensitivity = decoder_sensitivity(cfg, codecs, scenes_["test"])
    trained = train_models(cfg, latents, codecs, factor, dev, out_dir)
    models = trained["models"]
    acc = accuracy(cfg, models, codecs, scenes_["test"], dev)
    flat = flat_baseline(scenes_["test"], dev)
    shift_res, pans = shift_tests(cfg, models, codecs, scenes_, factor, dev)
    controls(cfg, codecs, scenes_, pans, factor, dev, shift_res)
    table = shift_table(shift_res)
    diffs = differences(shift_res, acc)
    versus = versus_references(acc, ceiling, flat)
    summary = summarise(cfg, factor, acc, ceiling, ceiling_by_code, flat, versus, table, diffs, trained["seconds"],
                        scenes_["render_seconds"], time.perf_counter() - t0, codecs, sensitivity)
    return write_outputs(out_dir, summary, curve_rows(shift_res, cfg.normals_shift_steps), pans,
                         cfg.normals_shift_steps)
