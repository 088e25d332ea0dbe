"""Stage ``noise_warping`` (notebooks/40_noise_warping.py): noise warps and Warped Diffusion's sampler at our scale.

Steps, in the order :func:`run` calls them (the notebook calls the same ones and plots between them):

1. :func:`make_videos`: analytic videos with exact flows, T2 (integer latent-pixel pans) and T3 (sub-pixel pan,
   rotation, zoom, elastic); :func:`stereo_check`: the flow convention on a real stereo pair.
2. :func:`noise_statistics`: what each noise warp (``afcore.noise_warp.METHODS``) preserves through a rotation.
3. :func:`bench`: milliseconds per warped noise frame per method, and batched GP warping.
4. :func:`load_inputs`: the vanilla VAE of stage ``af_vae`` and the encoded training crops;
   :func:`train_models`: the x4 super-resolution latent model (:class:`ResidualSR`, a residual over its input) on
   white noise ("indep"), then fine-tuned on GP noise ("gp") and, as the equal-steps control, on white ("indep_cont").
5. :func:`run_table`: every row of the paper's Tables 2/3 (and the lambda sweep) sampled on the videos, the controls
   (input, VAE ceiling, ground truth) and :func:`exact_guidance` on the pans; :func:`summarise_tables`,
   :func:`we_rows`: mean +- spread per row, paired per-video differences, per-frame warping errors.
6. :func:`guidance_diagnosis`: the share of latent energy above half Nyquist frame by frame (whether self-guidance
   fails under sub-pixel motion).
7. :func:`summary` and :func:`write_outputs`: ``metrics/40_noise_warping.json`` and ``metrics/40_noise_warping_we.csv``.

Outputs under ``out_dir``: ``checkpoints/warp/{indep,gp,indep_cont}`` (resumable), the two metrics files. The notebook adds the
figures (``figures/40_noise_warping``).
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from afcore import data, flow as FL, ldm, noise_warp as NW, video as VID
from afcore.stages.common import (ConfigError, StageConfig, Timer, batch_sampler, make_generator, mean_sem,
                                  out_path, paired_mean_sem, pick_device, sync, verdict)
from afcore.utils import save_csv, save_json, seed_everything

# videos come from these photographs, training crops from the rest
HELD_OUT = ("astronaut", "chelsea", "coffee", "rocket", "horse", "cat")
TRAIN_PHOTOS = tuple(p for p in data.PHOTOS if p not in HELD_OUT)
COMPASS = [(-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1)]
T3_KINDS = [("pan", {"speed": 0.35 * 4}), ("rotate", {}), ("zoom", {}), ("elastic", {})]  # sub-pixel latent pan 0.35
TABLES = ("T2", "T3")
NS = 32  # noise grid for the statistics
WE_KEYS = ("latent_first", "pixel_first", "latent_prev", "pixel_prev")
# guidance residual: "current" = the paper's (warp the current prediction onto the previous frame's grid);
# "previous" = warp the previous frame's stored prediction onto the current grid (the notebook's section 6)
TARGET = {"Warped Diffusion, stored target warped (beyond paper)": "previous"}
# Warped Diffusion's latent (SDXL at 1024 px) and ours: the paper-scaled lambda divides by the square root of ratio
PAPER_LATENT = (4, 128, 128)
# control rows of every table: the model's input, its VAE ceiling, and the ground truth itself
CONTROLS = ("Input: bicubic upsampled (pixels)", "Input: bicubic through the VAE",
            "VAE ceiling: ground truth through the VAE", "Ground-truth reference")
# paired per-video comparisons (a - b) reported for both tables
PAIRS = [("Nearest (indep)", "Bilinear (indep)"), ("How I Warped (indep)", "Bilinear (indep)"),
         ("How I Warped (indep)", "Nearest (indep)"), ("GP Warping", "Bilinear (gp)"),
         ("GP Warping", "Nearest (gp)"), ("GP Warping", "How I Warped (indep)"),
         ("Warped Diffusion", "GP Warping"), ("Warped Diffusion", "GP Warping, guided steps"),
         ("GP Warping", "Input: bicubic through the VAE"), ("GP Warping", "Input: bicubic upsampled (pixels)"),
         ("Warped Diffusion", "Input: bicubic through the VAE"),
         ("Resample (gp)", "Resample (indep, equal steps)"), ("Resample (gp)", "Resample (indep)")]
DIAG_ROWS = [("GP Warping, guided steps", "GP warping, no guidance"), ("Warped Diffusion", "paper's guidance"),
             ("Warped Diffusion, stored target warped (beyond paper)", "stored target warped")]


@dataclasses.dataclass(frozen=True)
class Config(StageConfig):
    SECTIONS = ("base", "warp")
    profile: str = "cpu"
    seed: int = 0
    device: str = "auto"
    warp_frame_size: int = 64
    warp_channels: tuple[int, ...] = (32, 64, 64)
    warp_train_crops: int = 2000
    warp_train_steps: int = 400
    warp_gp_finetune_steps: int = 120
    warp_batch: int = 16
    warp_lr: float = 0.001
    warp_ema_decay: float = 0.995
    warp_ckpt_every: int = 200
    warp_rff_features: int = 1000
    warp_rff_truncation: float = 2.0
    warp_hiwyn_factor: int = 8
    warp_frames: int = 6
    warp_videos: int = 8
    warp_steps: int = 25
    warp_guided_steps: int = 50
    warp_guidance: float = 1.0
    warp_guidance_sweep: tuple[float, ...] = (0.0, 1.0)
    warp_stat_draws: int = 200
    warp_bench_sizes: tuple[tuple[int, ...], ...] = ((128, 128, 4),)
    warp_bench_features: int = 3000
    warp_bench_batch: int = 64
    warp_bench_batch_size: tuple[int, ...] = (16, 16, 4)
    warp_bench_repeats: int = 3

    def check(self) -> None:
        def need(ok, key, allowed):
            if not ok:
                raise ConfigError(f"warp.{key} = {getattr(self, key)!r}: must be {allowed}")

        need(self.warp_frame_size >= 8 and self.warp_frame_size % 4 == 0, "warp_frame_size",
             "a multiple of 4 (the VAE factor), >= 8")
        need(len(self.warp_channels) >= 2 and all(c >= 8 and c % 8 == 0 for c in self.warp_channels),
             "warp_channels", "at least 2 levels, each a positive multiple of 8 (group norm)")
        for key in ("warp_train_crops", "warp_batch", "warp_rff_features", "warp_hiwyn_factor", "warp_videos",
                    "warp_steps", "warp_guided_steps", "warp_bench_features", "warp_bench_batch",
                    "warp_bench_repeats"):
            need(getattr(self, key) >= 1, key, ">= 1")
        for key in ("warp_train_steps", "warp_gp_finetune_steps", "warp_ckpt_every"):
            need(getattr(self, key) >= 0, key, ">= 0")
        need(self.warp_lr > 0, "warp_lr", "> 0")
        need(0 <= self.warp_ema_decay < 1, "warp_ema_decay", "in [0, 1)")
        need(self.warp_rff_truncation > 0, "warp_rff_truncation", "> 0")
        need(self.warp_frames >= 2, "warp_frames", ">= 2 (warping errors compare frames)")
        need(self.warp_guidance >= 0, "warp_guidance", ">= 0")
        need(all(lam >= 0 for lam in self.warp_guidance_sweep), "warp_guidance_sweep", "a list of lambdas >= 0")
        need(self.warp_stat_draws >= 2, "warp_stat_draws", ">= 2 (per-pixel variances over draws)")
        need(len(self.warp_bench_sizes) >= 1 and all(len(s) == 3 and min(s) >= 1 for s in self.warp_bench_sizes),
             "warp_bench_sizes", "a non-empty list of [H, W, C], each >= 1")
        need(len(self.warp_bench_batch_size) == 3 and min(self.warp_bench_batch_size) >= 1, "warp_bench_batch_size",
             "[H, W, C], each >= 1")


# ----------------------------------------------------------------------------------------------- 1 · videos
def make_videos(cfg: Config) -> dict[str, list]:
    """``{"T2": [...], "T3": [...]}``: ``warp_videos`` analytic videos (``afcore.flow.Video``) per table."""
    out = {}
    for table in TABLES:
        vids = []
        for i in range(cfg.warp_videos):
            photo = HELD_OUT[i % len(HELD_OUT)]
            if table == "T2":  # integer translation: 1 latent pixel (4 image px) per axis and frame, compass direction
                g = torch.Generator().manual_seed(cfg.seed + 100 + i)
                dy, dx = COMPASS[int(torch.randint(0, 8, (1,), generator=g, device="cpu"))]
                vids.append(FL.synthetic_video("pan", cfg.warp_frame_size, cfg.warp_frames, photo,
                                               seed=cfg.seed + 100 + i, velocity=(4.0 * dy, 4.0 * dx)))
            else:
                kind, kw = T3_KINDS[i % len(T3_KINDS)]
                vids.append(FL.synthetic_video(kind, cfg.warp_frame_size, cfg.warp_frames, photo,
                                               seed=cfg.seed + 200 + i, **kw))
        out[table] = vids
    return out


def stereo_check(scale: int = 4) -> tuple[dict, tuple]:
    """The flow convention on scikit-image's motorcycle pair: mean |warped right - left| (in 0..255 units) with
    the flow and with its opposite sign. Returns (metrics, (left, right, warped right x valid)) for the figure."""
    left, right, sflow, svalid = FL.stereo_pair(scale=scale)
    warped_r, inside_r = FL.backward_warp(right, sflow)
    wrong_r, inside_w = FL.backward_warp(right, -sflow)
    stereo = {"mean_abs_err_255": float(((warped_r - left).abs().mean(1, keepdim=True) * svalid * inside_r).sum()
                                        / (svalid * inside_r).sum() * 127.5),
              "wrong_sign_mean_abs_err_255": float(((wrong_r - left).abs().mean(1, keepdim=True) * svalid * inside_w)
                                                   .sum() / (svalid * inside_w).sum() * 127.5)}
    return stereo, (left[0], right[0], warped_r[0] * svalid[0])


# ------------------------------------------------------------------------------------ 2 · noise statistics
def noise_statistics(cfg: Config) -> tuple[list[dict], dict]:
    """Every method warps frame 0's noise through a 5 degree-per-frame rotation; statistics of frames 0 and 2 over
    ``warp_stat_draws`` draws. Returns (one row per method, {method: (frame-0 spectrum, frame-2 spectrum)})."""
    rot = FL.motion("rotate", NS, degrees=5.0)
    to_first = torch.stack([rot.flow(j, 0, (NS, NS))[0] for j in range(3)])[:, None].expand(
        -1, cfg.warp_stat_draws, -1, -1, -1)
    prev = torch.stack([rot.flow(j - 1, j, (NS, NS))[0] for j in (1, 2)])[:, None]
    rows, spectra = [], {}
    for method in tqdm(NW.METHODS, desc="noise statistics", leave=False):
        g = torch.Generator().manual_seed(cfg.seed + 11)
        n = NW.noise_video(method, (cfg.warp_stat_draws, 1, NS, NS), to_first, prev, generator=g,
                           factor=cfg.warp_hiwyn_factor, rff_features=cfg.warp_rff_features,
                           rff_truncation=cfg.warp_rff_truncation)
        s0, s2 = NW.noise_stats(n[0]), NW.noise_stats(n[2])
        inner = (slice(None), slice(None), slice(6, -6), slice(6, -6))  # away from the disoccluded corners
        s2i = NW.noise_stats(n[2][inner])
        spectra[method] = (s0["spectrum"], s2["spectrum"])
        rows.append({"method": method, "frame0_var": s0["var"], "frame2_var": s2["var"],
                     "frame2_var_inner": s2i["var"], "frame2_var_map_min": s2["var_map_range"][0],
                     "frame2_var_map_max": s2["var_map_range"][1], "frame0_corr_x": s0["corr_x"],
                     "frame2_corr_x": s2["corr_x"], "frame2_corr_y": s2["corr_y"], "frame2_mean": s2["mean"],
                     "spectrum_ratio_max_dev": float((s2["spectrum"][1] / s0["spectrum"][1] - 1).abs().max())})
    return rows, spectra


def noise_samples(cfg: Config, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """One white and one GP noise image (1, 1, size, size), for the notebook's figure."""
    g = torch.Generator().manual_seed(cfg.seed)
    white = torch.randn(1, 1, size, size, generator=g, device="cpu")
    gp = NW.RFFNoise(1, 1, features=cfg.warp_rff_features, truncation=cfg.warp_rff_truncation,
                     generator=g)(grid_size=(size, size))
    return white, gp


def warped_noise_frames(cfg: Config, methods=("resample", "bilinear", "hiwyn", "gp_warp"), size: int = 48,
                        frames: int = 12) -> dict[str, torch.Tensor]:
    """Each method's noise (frames, size, size) following a 3 degree-per-frame rotation, for the notebook's GIF."""
    rot = FL.motion("rotate", size, degrees=3.0)
    tf = torch.stack([rot.flow(j, 0, (size, size))[0] for j in range(frames)])[:, None]
    pf = torch.stack([rot.flow(j - 1, j, (size, size))[0] for j in range(1, frames)])[:, None]
    return {m: NW.noise_video(m, (1, 1, size, size), tf, pf, generator=torch.Generator().manual_seed(cfg.seed + 3),
                              factor=cfg.warp_hiwyn_factor, rff_features=cfg.warp_rff_features)[:, 0, 0]
            for m in methods}


# ---------------------------------------------------------------------------------------------- 3 · cost
def timed(fn, repeats: int, device) -> float:
    """Median milliseconds of ``fn()`` over ``repeats`` runs after one warm-up, synchronised with ``device``."""
    fn()
    sync(device)
    ts = []
    for _ in range(repeats):
        with Timer(device) as t:
            fn()
        ts.append(t.seconds)
    return float(np.median(ts)) * 1000


def bench(cfg: Config, dev) -> list[dict]:
    """ms per warped frame: nearest, bilinear, integral (HIWYN) and GP warping per ``warp_bench_sizes``
    (2 degree-per-frame rotation), then ``warp_bench_batch`` GP warps in one call."""
    dev = torch.device(dev)
    rows = []
    for h, w, c in cfg.warp_bench_sizes:
        m = FL.motion("rotate", h, degrees=2.0)
        back = m.flow(1, 0, (h, w), device=dev).to(dev)
        fwd = m.flow(0, 1, (h, w), device=dev).to(dev)
        x = torch.randn(1, c, h, w, device=dev)
        pos = FL.grid(h, w, device=dev)[None] + back
        rff = NW.RFFNoise(1, c, features=cfg.warp_bench_features, truncation=cfg.warp_rff_truncation, device=dev)
        cases = {"nearest": lambda: FL.sample_at(x, pos, mode="nearest"),
                 "bilinear": lambda: FL.sample_at(x, pos, mode="bilinear"),
                 f"hiwyn (N={cfg.warp_hiwyn_factor})": lambda: NW.integral_warp(x, fwd, cfg.warp_hiwyn_factor),
                 f"gp (J={cfg.warp_bench_features})": lambda: rff(pos)}
        for name, fn in cases.items():
            rows.append({"size": f"{h}x{w}x{c}", "method": name,
                         "ms_per_frame": timed(fn, cfg.warp_bench_repeats, dev), "device": str(dev)})
    h, w, c = cfg.warp_bench_batch_size
    m = FL.motion("rotate", h, degrees=2.0)
    posb = (FL.grid(h, w, device=dev)[None] + m.flow(1, 0, (h, w)).to(dev)).expand(cfg.warp_bench_batch, -1, -1, -1)
    rffb = NW.RFFNoise(cfg.warp_bench_batch, c, features=cfg.warp_bench_features, truncation=cfg.warp_rff_truncation,
                       device=dev)
    batched_ms = timed(lambda: rffb(posb), cfg.warp_bench_repeats, dev)
    rows.append({"size": f"{cfg.warp_bench_batch} x {h}x{w}x{c}",
                 "method": f"gp (J={cfg.warp_bench_features}), batched",
                 "ms_per_frame": batched_ms / cfg.warp_bench_batch, "ms_total": batched_ms, "device": str(dev)})
    return rows


# --------------------------------------------------------------------------------- 4 · latents and models
@dataclasses.dataclass
class Latents:
    """The vanilla VAE (stage ``af_vae``), its factor, the latent scale (1 / std of the training latents) and the
    scaled training latents ``z`` and conditions ``c`` (latents of the degraded crops), on the CPU."""
    vae: torch.nn.Module
    factor: int
    scale: float
    z: torch.Tensor
    c: torch.Tensor
    device: torch.device

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.z.shape[1:])

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([ldm.encode_latents(self.vae, x[i:i + 256].to(self.device))
                          for i in range(0, len(x), 256)]).cpu() * self.scale

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.vae.decode(z[i:i + 256].to(self.device) / self.scale).sample
                          for i in range(0, len(z), 256)]).clamp(-1, 1).cpu()


def load_inputs(cfg: Config, dev, root) -> Latents:
    """The VAE from ``root/checkpoints/vae/vanilla`` and ``warp_train_crops`` crops of the training photos, encoded."""
    from diffusers import AutoencoderKL

    from afcore import vae as VAE
    from afcore.surgery import load_alias_free

    dev = torch.device(dev)
    path = Path(root) / "checkpoints" / "vae" / "vanilla"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: stage noise_warping needs the vanilla VAE of stage af_vae")
    vae = load_alias_free(AutoencoderKL, str(path)).eval().to(dev)
    f = VAE.factor(vae)
    if cfg.warp_frame_size % f:
        raise ConfigError(f"warp.warp_frame_size ({cfg.warp_frame_size}) must be a multiple of the VAE factor {f}")
    train_images = data.random_crops(cfg.warp_train_crops, cfg.warp_frame_size, seed=cfg.seed,
                                     images=data.natural_images(TRAIN_PHOTOS))
    with torch.no_grad():
        z_train = ldm.encode_latents(vae, train_images.to(dev)).cpu()
        scale = float(1 / z_train.std())
        c_train = ldm.encode_latents(vae, VID.degrade_sr(train_images).to(dev)).cpu() * scale
    return Latents(vae, f, scale, z_train * scale, c_train, dev)


class ResidualSR(torch.nn.Module):
    """The x4 SR model as its input plus a predicted residual (choices the paper does not make, see ``docs/video.md``).

    The network sees ``cat(y_t, c)`` (noisy latent, condition) and predicts the clean *residual* ``z - c``
    (x0-parameterisation, a target of std ~0.2 instead of the latents' 1); the wrapper returns the epsilon that
    prediction implies, ``eps = (y_t - sqrt(abar_t) (c + r)) / sqrt(1 - abar_t)``, so from outside it is an ordinary
    epsilon model: sampling, noise warping and guidance run unchanged. Why: the first version (an epsilon-predicting
    U-Net on ``z``) scored 8-10 dB below its own input. An epsilon prediction from almost pure noise turns into a clean
    estimate with its error multiplied by ``sqrt((1 - abar) / abar)`` (15x at the first DDIM step), and DDIM (eta 0)
    keeps that error; a residual predicted directly stays bounded by construction, and a network that knows nothing
    returns its input.
    """

    def __init__(self, net: torch.nn.Module, alphas_cumprod: torch.Tensor):
        super().__init__()
        self.net = net
        self.register_buffer("abar", alphas_cumprod.detach().float().clone())

    def residual(self, inp: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The predicted clean residual ``z - c`` (B, C, h, w)."""
        return self.net(inp, t).sample

    def forward(self, inp: torch.Tensor, t: torch.Tensor):
        k = inp.shape[1] // 2  # input = cat(noisy latent, condition)
        y, c = inp[:, :k], inp[:, k:]
        a = self.abar.to(y.device)[torch.as_tensor(t, device=y.device).long()].reshape(-1, 1, 1, 1)
        eps = (y - a.sqrt() * (c + self.residual(inp, t))) / (1 - a).sqrt()
        return SimpleNamespace(sample=eps)


def residual_loss(model: ResidualSR, z0, cond, scheduler, generator, noise: str, rff_features: int,
                  rff_truncation: float):
    """MSE of the predicted residual against ``z0 - cond`` at a uniform random training step, with white
    (``indep``) or GP noise (the noise the sampler will start from); returns (loss, logs)."""
    src = generator.device if generator is not None else z0.device
    t = torch.randint(0, scheduler.config.num_train_timesteps, (z0.shape[0],), generator=generator,
                      device=src).to(z0.device)
    eps = VID._noise(z0.shape, noise, generator, z0.device, rff_features, rff_truncation)
    y = scheduler.add_noise(z0, eps, t)
    loss = F.mse_loss(model.residual(torch.cat([y, cond], 1), t), z0 - cond)
    return loss, {"diffusion": loss.item()}


def sr_model(cfg: Config, lat: Latents) -> ResidualSR:
    """A fresh residual x4 SR model on the latent shape of ``lat``."""
    sched = ldm.make_scheduler("ddpm", schedule=VID.SCHEDULE)
    return ResidualSR(VID.sr_unet(tuple(cfg.warp_channels), lat.shape[0], lat.shape[-1]), sched.alphas_cumprod)


def train_model(cfg: Config, lat: Latents, kind: str, steps: int, root, start=None, name: str | None = None):
    """The conditional latent U-Net on ``kind`` noise ("indep": white, "gp": GP noise) for ``steps`` steps,
    resumable in ``root/checkpoints/warp/<name or kind>``; ``start`` = (name, model) to continue from. Returns
    (EMA model in eval mode, loss history)."""
    from afcore.train import WEIGHT_DECAY, prepare_run_dir, train_loop

    if kind not in ("indep", "gp"):
        raise ValueError(f"kind must be 'indep' or 'gp', got {kind!r}")
    dev = lat.device
    fp = dict(kind=kind, channels=list(cfg.warp_channels), steps=steps, start=start and start[0],
              batch=cfg.warp_batch, lr=cfg.warp_lr, ema=cfg.warp_ema_decay, crops=cfg.warp_train_crops,
              size=cfg.warp_frame_size, seed=cfg.seed, scale=round(lat.scale, 6),
              rff=(cfg.warp_rff_features, cfg.warp_rff_truncation), weight_decay=WEIGHT_DECAY,
              model="x0-residual over the input")
    run_dir = prepare_run_dir(Path(root) / "checkpoints" / "warp" / (name or kind), fp)
    seed_everything(cfg.seed)
    unet = sr_model(cfg, lat)
    if start is not None:
        unet.load_state_dict(start[1].state_dict())
    sched = ldm.make_scheduler("ddpm", schedule=VID.SCHEDULE)
    # batch seeds seed * 100003 + step, continuing the starting model's stream (its steps + step), so the GP
    # fine-tuning and the white control continuation see the same batches: indices and noise on the batch's device
    draw = batch_sampler(lat.z, lat.c, batch_size=cfg.warp_batch, seed=cfg.seed, device=dev)
    offset = cfg.warp_train_steps if start is not None else 0

    def get_batch(step):
        return draw(step + offset)

    def loss_fn(model, batch, step):
        z, c, s = batch
        return residual_loss(model, z, c, sched, make_generator(int(s) + 1, z.device), noise=kind,
                             rff_features=cfg.warp_rff_features, rff_truncation=cfg.warp_rff_truncation)

    unet, ema, hist = train_loop(unet, loss_fn, get_batch, steps=steps, lr=cfg.warp_lr, ckpt_dir=run_dir,
                                 ckpt_every=cfg.warp_ckpt_every, ema_decay=cfg.warp_ema_decay,
                                 weight_decay=WEIGHT_DECAY, device=str(dev),
                                 desc=f"{name or kind} model", log_csv=run_dir / "loss.csv")
    return (ema or unet).to(dev).eval(), hist


def train_models(cfg: Config, lat: Latents, root) -> tuple[dict, dict, dict]:
    """The white-noise model from scratch, then from it the GP-noise model and, as the equal-steps control, the
    white model continued on white noise for as many steps ("indep_cont"): (models, histories, train seconds)."""
    models, histories = {}, {}
    models["indep"], histories["indep"] = train_model(cfg, lat, "indep", cfg.warp_train_steps, root)
    models["gp"], histories["gp"] = train_model(cfg, lat, "gp", cfg.warp_gp_finetune_steps, root,
                                                start=("indep", models["indep"]))
    models["indep_cont"], histories["indep_cont"] = train_model(cfg, lat, "indep", cfg.warp_gp_finetune_steps, root,
                                                                start=("indep", models["indep"]),
                                                                name="indep_cont")
    train_seconds = {k: sum(r["seconds"] for r in h) for k, h in histories.items()}
    return models, histories, train_seconds


# ------------------------------------------------------------------------------------------- 5 · tables
def rows(cfg: Config) -> list[tuple]:
    """(row, model, noise method, guidance, paper T2 (WE, WE std, SSIM, MSE), paper T3 (same))."""
    lam = cfg.warp_guidance
    return [
        ("Fixed (indep)", "indep", "fixed", None, (0.080, 0.014, .780, .059), (0.940, 0.312, .716, .005)),
        ("Resample (indep)", "indep", "resample", None, (0.101, 0.006, .781, .061), (0.934, 0.341, .708, .005)),
        ("Nearest (indep)", "indep", "nearest", None, None, (1.048, 0.381, .683, .007)),
        ("Bilinear (indep)", "indep", "bilinear", None, None, (0.990, 0.372, .684, .008)),
        ("How I Warped (indep)", "indep", "hiwyn", None, (0.046, 0.007, .781, .067), None),
        ("Fixed (gp)", "gp", "gp_fixed", None, (0.129, 0.022, .800, .060), (1.006, 0.362, .666, .007)),
        ("Resample (gp)", "gp", "gp_resample", None, (0.141, 0.008, .806, .056), (0.974, 0.308, .661, .006)),
        ("Nearest (gp)", "gp", "gp_nearest", None, None, (0.975, 0.383, .637, .009)),
        ("Bilinear (gp)", "gp", "gp_bilinear", None, None, (0.953, 0.390, .635, .009)),
        ("GP Warping", "gp", "gp_warp", None, (0.061, 0.010, .803, .057), (0.812, 0.337, .653, .008)),
        ("Warped Diffusion", "gp", "gp_warp", lam, (0.001, 0.001, .779, .058), (0.649, 0.363, .654, .008)),
        ("No warp (resample gp) + guidance (beyond paper)", "gp", "gp_resample", lam, None, None),
        ("Warped Diffusion, stored target warped (beyond paper)", "gp", "gp_warp", lam, None, None),
        ("Resample (indep, equal steps)", "indep_cont", "resample", None, None, None),
    ]


def paper_scaled_lambda(cfg: Config, latent: tuple[int, ...]) -> float:
    """The lambda whose guidance step per latent element matches the paper's on a ``latent`` (C, h, w) frame. The
    DPS step ``lambda grad / |r|`` has about the same length whatever the latent size, so per element it shrinks as
    1 / sqrt(elements): on 16x16x4 latents it is sqrt(65536 / 1024) = 8x the paper's (SDXL, 128x128x4) at equal
    lambda."""
    return round(cfg.warp_guidance * math.sqrt(math.prod(latent) / math.prod(PAPER_LATENT)), 6)


def sweep(cfg: Config, latent: tuple[int, ...]) -> list[float]:
    """Extra GP-warping lambdas at the guided step count (0 and ``warp_guidance`` are runs of their own), with the
    paper-scaled lambda added."""
    extra = [lam for lam in cfg.warp_guidance_sweep if lam not in (0.0, cfg.warp_guidance)]
    return sorted(set(extra + [paper_scaled_lambda(cfg, latent)]) - {0.0, cfg.warp_guidance})


def noises_for(cfg: Config, lat: Latents, method: str, videos, indices=None) -> torch.Tensor:
    """(T, B, C, h, w) noise of ``method`` on the latent grid for the videos. Every method draws from the same
    generator stream per video (seed ``seed * 1000 + video index``; ``indices``: the videos' indices in their table,
    default 0..B-1), so the white methods share frame 0's noise, the GP methods share their random function, and
    the rows of a table differ by the warp, not by the draw (on T2's integer pans nearest and bilinear give identical
    noise). Drawn on the CPU (the same numbers on every device), warped on the latents' device."""
    f = lat.factor
    indices = range(len(videos)) if indices is None else indices
    out = []
    for i, vid in zip(indices, videos):
        g = torch.Generator().manual_seed(cfg.seed * 1000 + i)
        out.append(NW.noise_video(method, (1,) + lat.shape, vid.flows("to_first", scale=f)[:, None],
                                  vid.flows("prev", scale=f)[:, None], generator=g, factor=cfg.warp_hiwyn_factor,
                                  rff_features=cfg.warp_rff_features, rff_truncation=cfg.warp_rff_truncation,
                                  device=lat.device))
    return torch.cat(out, 1)


@torch.no_grad()
def video_warp_errors(y: torch.Tensor, videos, scale: float) -> dict:
    """Warping errors of a video batch y (T, B, C, h, w) on a grid ``scale`` times coarser than the frames:
    ``{"first": (T-1, B), "prev": (T-1, B)}``. Pans are warped exactly (``FL.fourier_warp``, so the ground truth of
    a sub-pixel pan scores ~0 instead of the bilinear interpolation error), other motions bilinearly."""
    out = {"first": [], "prev": []}
    for b, vid in enumerate(videos):
        warp = FL.fourier_warp if vid.motion.kind == "pan" else None
        first, prev = vid.flows("first", scale=scale), vid.flows("prev", scale=scale)
        out["first"].append(torch.cat([FL.warp_error(y[j, b:b + 1], y[0, b:b + 1], first[j - 1:j], warp=warp)
                                       for j in range(1, len(y))]))
        out["prev"].append(torch.cat([FL.warp_error(y[j, b:b + 1], y[j - 1, b:b + 1], prev[j - 1:j], warp=warp)
                                      for j in range(1, len(y))]))
    return {k: torch.stack(v, 1) for k, v in out.items()}


def high_energy(x: torch.Tensor) -> torch.Tensor:
    """Energy above half Nyquist (either axis) per image: (..., C, H, W) -> (...)."""
    e = torch.fft.fft2(x.double()).abs() ** 2
    fy = torch.fft.fftfreq(x.shape[-2], device=x.device).abs()
    fx = torch.fft.fftfreq(x.shape[-1], device=x.device).abs()
    return (e * ((fy[:, None] > 0.25) | (fx[None, :] > 0.25)).double()).sum((-1, -2, -3)).float()


def measure(z: torch.Tensor, imgs: torch.Tensor, frames: torch.Tensor, videos, factor: int, seconds: float) -> dict:
    """One row's per-video measurements: warping errors (latent and pixel, first and previous frame), PSNR, SSIM,
    MSE per image, the high-frequency energy of each decoded frame relative to the ground truth's (blur scores below
    1, so a blurry output cannot win on the warping error unseen), the images, latents and seconds per frame."""
    lw, pw = video_warp_errors(z, videos, factor), video_warp_errors(imgs, videos, 1)
    rest = VID.restoration(imgs.flatten(0, 1), frames.flatten(0, 1))
    hf = (high_energy(imgs) / high_energy(frames)).flatten()
    return {"latent_first": lw["first"], "latent_prev": lw["prev"], "pixel_first": pw["first"],
            "pixel_prev": pw["prev"], "psnr": rest["psnr"], "ssim": rest["ssim"], "mse01": rest["mse01"],
            "hf_ratio": hf, "images": imgs, "latents": z, "sec_per_frame": seconds}


def run_table(cfg: Config, videos, lat: Latents, models: dict) -> tuple[dict, dict, torch.Tensor, torch.Tensor]:
    """Every row, control and lambda-sweep run on ``videos`` (one table): (results per label, the exact-warp guidance
    runs on the pans, frames (T, B, 3, S, S), decoded low-resolution inputs). Results hold per-frame warping errors,
    per-image PSNR/SSIM/MSE/high-frequency ratio, the decoded images, the final latents and seconds per frame."""
    dev, f, LAT, S = lat.device, lat.factor, lat.shape, cfg.warp_frame_size
    b, T = len(videos), cfg.warp_frames
    frames = torch.stack([vid.frames for vid in videos], 1)  # (T, B, 3, S, S)
    bicubic = VID.degrade_sr(frames.flatten(0, 1))
    conds = lat.encode(bicubic).reshape(T, b, *LAT)
    lat_prev = torch.stack([vid.flows("prev", scale=f) for vid in videos], 1)
    lat_back = torch.stack([torch.cat([vid.flow(j, j - 1, scale=f) for j in range(1, T)]) for vid in videos], 1)
    # jobs: (label, model, method, lambda, steps); batched per (model, guided?, steps, target) to use the device well
    jobs = [(r[0], r[1], r[2], r[3], cfg.warp_guided_steps if r[3] is not None else cfg.warp_steps)
            for r in rows(cfg)]
    jobs += [(f"GP Warping + guidance lambda={lam}", "gp", "gp_warp", lam, cfg.warp_guided_steps) for lam in sweep(cfg, LAT)]
    jobs += [("GP Warping, guided steps", "gp", "gp_warp", None, cfg.warp_guided_steps)]
    groups = {}
    for job in jobs:
        groups.setdefault((job[1], job[3] is not None, job[4], TARGET.get(job[0], "current")), []).append(job)
    latents, seconds = {}, {}
    for (model, guided, steps, target), group in tqdm(groups.items(), desc="sampling groups", leave=False):
        noise = torch.cat([noises_for(cfg, lat, j[2], videos) for j in group], 1).to(dev)
        cond = conds.repeat(1, len(group), 1, 1, 1).to(dev)
        lam = torch.cat([torch.full((b,), float(j[3] or 0.0), device=dev) for j in group]).to(dev) if guided else None
        with Timer(dev) as timer:
            out = VID.sample_video(models[model], noise, cond, steps, guidance=lam,
                                   prev_flows=lat_prev.repeat(1, len(group), 1, 1, 1).to(dev) if guided else None,
                                   guidance_target=target,
                                   back_flows=lat_back.repeat(1, len(group), 1, 1, 1).to(dev) if guided else None,
                                   progress=True).cpu()
        sec = timer.seconds / (len(group) * b * T)
        for k, j in enumerate(group):
            latents[j[0]] = out[:, k * b:(k + 1) * b]
            seconds[j[0]] = sec
    results = {label: measure(z, lat.decode(z.flatten(0, 1)).reshape(T, b, 3, S, S), frames, videos, f,
                              seconds[label]) for label, z in latents.items()}
    # controls: the input (bicubic, in pixels and through the VAE), the VAE ceiling and the ground truth itself
    gt_lat = lat.encode(frames.flatten(0, 1)).reshape(T, b, *LAT)
    lr = lat.decode(conds.flatten(0, 1)).reshape(T, b, 3, S, S)
    control_images = {CONTROLS[0]: (conds, bicubic.reshape(T, b, 3, S, S)), CONTROLS[1]: (conds, lr),
                      CONTROLS[2]: (gt_lat, lat.decode(gt_lat.flatten(0, 1)).reshape(T, b, 3, S, S)),
                      CONTROLS[3]: (gt_lat, frames)}
    for label, (z, imgs) in control_images.items():
        results[label] = measure(z, imgs, frames, videos, f, 0.0)
    exact = exact_guidance(cfg, videos, lat, models, conds, lat_prev, frames, results)
    return results, exact, frames, lr


def exact_guidance(cfg: Config, videos, lat: Latents, models: dict, conds, lat_prev, frames, results) -> dict:
    """The pans of a table sampled with the paper's guidance but an exact (Fourier) warp in its residual, at
    ``warp_guidance`` and at the paper-scaled lambda, beside the same videos' bilinear runs: does guidance lower its
    own residual (the previous-frame latent warping error) when the warp is exact? {label: measurements}."""
    pans = [i for i, vid in enumerate(videos) if vid.motion.kind == "pan"]
    if not pans:
        return {}
    dev, f, T, S = lat.device, lat.factor, cfg.warp_frames, cfg.warp_frame_size
    sub = [videos[i] for i in pans]
    lams = [cfg.warp_guidance, paper_scaled_lambda(cfg, lat.shape)]
    n = len(pans)
    noise = noises_for(cfg, lat, "gp_warp", sub, indices=pans).repeat(1, len(lams), 1, 1, 1).to(dev)
    lam = torch.cat([torch.full((n,), lam_, device=dev) for lam_ in lams])
    out = VID.sample_video(models["gp"], noise, conds[:, pans].repeat(1, len(lams), 1, 1, 1).to(dev),
                           cfg.warp_guided_steps, guidance=lam, prev_flows=lat_prev[:, pans].repeat(
                               1, len(lams), 1, 1, 1).to(dev), warp=FL.fourier_warp).cpu()
    runs = {"no guidance (guided steps)": results["GP Warping, guided steps"]["latents"][:, pans],
            f"bilinear warp, lambda={lams[0]}": results["Warped Diffusion"]["latents"][:, pans],
            f"bilinear warp, lambda={lams[1]}": results[f"GP Warping + guidance lambda={lams[1]}"]["latents"][:, pans]}
    for k, lam_ in enumerate(lams):
        runs[f"exact warp, lambda={lam_}"] = out[:, k * n:(k + 1) * n]
    return {label: measure(z, lat.decode(z.flatten(0, 1)).reshape(T, n, 3, S, S), frames[:, pans], sub, f, 0.0)
            | {"high_share_last": high_share(z[-1])} for label, z in runs.items()}


def per_video(res: dict, key: str) -> torch.Tensor:
    """(B,) per-video value of ``key``: warping errors averaged over frames 1..T-1, image metrics over frames."""
    if key in WE_KEYS:
        return res[key].mean(0)
    return res[key].reshape(len(res["latents"]), -1).mean(0)


def summarise(res: dict) -> dict:
    """One row's summary: warping errors (mean over frames per video; mean, std and SE over videos), PSNR, SSIM,
    MSE, high-frequency ratio (mean over frames per video, mean +- SE over videos), seconds per frame."""
    out = {}
    for key in WE_KEYS + ("psnr", "ssim", "mse01", "hf_ratio"):
        v = per_video(res, key).double().numpy()
        out[key] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                    "sem": mean_sem(v)[1]}
    out["sec_per_frame"] = res["sec_per_frame"]
    return out


def paired(res: dict, a: str, b: str) -> dict:
    """Row a minus row b, paired per video (same videos, same noise stream): mean +- SE of the differences and the
    verdict ('higher'/'lower' when |diff| > 2 SE, else 'not resolved') for the first-frame warping errors (also as
    the log ratio, whose mean is the geometric-mean ratio), PSNR and the high-frequency ratio."""
    out = {}
    for key in ("latent_first", "pixel_first", "psnr", "hf_ratio"):
        m, se = paired_mean_sem(per_video(res[a], key), per_video(res[b], key))
        out[key] = {"diff": m, "sem": se, "verdict": verdict(m, se)}
    for key in ("latent_first", "pixel_first"):
        m, se = paired_mean_sem(per_video(res[a], key).log(), per_video(res[b], key).log())
        out[f"{key}_ratio"] = {"geo_mean": math.exp(m), "log_diff": m, "sem": se, "verdict": verdict(m, se)}
    return out


def summarise_tables(cfg: Config, tables: dict) -> dict:
    """Per table: the rows (with the paper's numbers), the controls, the lambda sweep, paired differences between
    rows and the exact-warp guidance runs on the pans."""
    summary_tables = {}
    for table, (res, exact, _frames, _lr) in tables.items():
        out_rows = []
        for r in rows(cfg):
            s = summarise(res[r[0]])
            paper = r[4] if table == "T2" else r[5]
            out_rows.append({"row": r[0], **s, "paper": None if paper is None else
                             {"warp_err": paper[0], "warp_err_std": paper[1], "ssim": paper[2], "mse": paper[3]}})
        latent = tuple(res["GP Warping"]["latents"].shape[2:])
        runs = ([("GP Warping, guided steps", None)] + [(f"GP Warping + guidance lambda={lam}", lam)
                                                        for lam in sweep(cfg, latent)]
                + [("Warped Diffusion", cfg.warp_guidance)])
        lam_sweep = [{"lambda": 0.0 if lam is None else lam, **summarise(res[label])} for label, lam in runs]
        summary_tables[table] = {
            "rows": out_rows, "controls": [{"row": c, **summarise(res[c])} for c in CONTROLS],
            "lambda_sweep": sorted(lam_sweep, key=lambda s: s["lambda"]),
            "paired": [{"a": a, "b": b, **paired(res, a, b)} for a, b in PAIRS],
            # a list with a "run" field (run names hold dots, which claim paths cannot use as keys)
            "exact_warp_guidance_pans": [{"run": label, **summarise(r), "high_share_last_frame": float(
                r["high_share_last"].mean())} for label, r in exact.items()]}
    return summary_tables


def we_rows(cfg: Config, tables: dict) -> list[dict]:
    """Per table, row and frame 1..T-1: the warping errors averaged over videos (the CSV the DVC plot reads)."""
    out = []
    for table in TABLES:
        res = tables[table][0]
        for label in [r[0] for r in rows(cfg)] + list(CONTROLS):
            for j in range(1, cfg.warp_frames):
                out.append({"table": table, "method": label, "frame": j,
                            **{k: float(res[label][k][j - 1].mean()) for k in WE_KEYS}})
    return out


# ------------------------------------------------------------------------------------ 6 · guidance diagnosis
def high_share(z: torch.Tensor) -> torch.Tensor:
    """Share of the energy above half Nyquist (either axis), per latent: (..., C, h, w) -> (...)."""
    e = torch.fft.fft2(z.double()).abs() ** 2
    fy = torch.fft.fftfreq(z.shape[-2], device=z.device).abs()
    fx = torch.fft.fftfreq(z.shape[-1], device=z.device).abs()
    hi = ((fy[:, None] > 0.25) | (fx[None, :] > 0.25)).double()
    return ((e * hi).sum((-1, -2, -3)) / e.sum((-1, -2, -3))).float()


def guidance_diagnosis(cfg: Config, tables: dict, factor: int) -> tuple[dict, dict]:
    """High-frequency share of the T3 latents frame by frame for no guidance, the paper's guidance and the stored
    target warped: (the metrics, {label: (T, B) shares}), with the pans' growth of the share under the paper's
    guidance (last frame / first frame) and whether warping the stored target keeps fewer high frequencies."""
    res3 = tables["T3"][0]
    shares = {label: high_share(res3[key]["latents"]) for key, label in DIAG_ROWS}  # (T, B)
    pan_delta = T3_KINDS[0][1]["speed"] / factor % 1
    diag = {
        "bilinear_nyquist_gain_of_the_pan_step": abs(1 - 2 * pan_delta), "pan_step_latent_px": pan_delta,
        "high_share_first_frame": {label: float(shares[label][0].mean()) for _, label in DIAG_ROWS},
        "high_share_last_frame": {label: float(shares[label][-1].mean()) for _, label in DIAG_ROWS},
        "high_share_last_frame_per_video": {label: shares[label][-1].tolist() for _, label in DIAG_ROWS},
        "videos": [T3_KINDS[i % len(T3_KINDS)][0] for i in range(cfg.warp_videos)],
    }
    pan = [i for i in range(cfg.warp_videos) if T3_KINDS[i % len(T3_KINDS)][0] == "pan"]
    grown = shares["paper's guidance"][-1, pan] / shares["paper's guidance"][0, pan]
    # the mechanism the notebook describes, recorded (not asserted: it is a finding of the trained model)
    diag["pan_paper_guidance_high_share_growth"] = grown.tolist()
    diag["pan_stored_target_below_paper"] = bool((shares["stored target warped"][-1, pan]
                                                  < shares["paper's guidance"][-1, pan]).all())
    return diag, shares


# ------------------------------------------------------------------------------------------- 7 · summary
def summary(cfg: Config, lat: Latents, stereo: dict, stat_rows: list, cost: list, train_seconds: dict,
            summary_tables: dict, diagnosis: dict) -> dict:
    """The metrics JSON: scale, conventions, every step's numbers, the T3 single-frame restoration (the paper's
    Table 1) and the Warped Diffusion / GP warping ratios beside the paper's."""
    def ratio(table, a, b, key="latent_first"):
        by_row = {r["row"]: r for r in summary_tables[table]["rows"]}
        return by_row[a][key]["mean"] / by_row[b][key]["mean"]

    def pair(table, a, b):
        return next(p for p in summary_tables[table]["paired"] if p["a"] == a and p["b"] == b)

    rows1 = {r["row"]: r for r in summary_tables["T3"]["rows"]}
    table1 = {k: {m: {"mean": rows1[k][m]["mean"], "sem": rows1[k][m]["sem"]} for m in ("psnr", "ssim", "mse01")}
              for k in ("Resample (indep)", "Resample (indep, equal steps)", "Resample (gp)")}
    table1["gp_minus_indep_equal_steps"] = pair("T3", "Resample (gp)", "Resample (indep, equal steps)")
    ratios = {t: {"wd_over_gp_warping_latent": ratio(t, "Warped Diffusion", "GP Warping"),
                  "wd_over_gp_warping_pixel": ratio(t, "Warped Diffusion", "GP Warping", "pixel_first"),
                  # per-video geometric-mean ratio with the SE of its log: the verdict by the 2-SE rule
                  "wd_over_gp_warping_latent_paired": pair(t, "Warped Diffusion", "GP Warping")["latent_first_ratio"],
                  "wd_over_gp_warping_pixel_paired": pair(t, "Warped Diffusion", "GP Warping")["pixel_first_ratio"],
                  "paper_wd_over_gp_warping": 0.001 / 0.061 if t == "T2" else 0.649 / 0.812,
                  # the paper's WD warping error 0.001 +- 0.001 (T2) makes its own ratio uncertain by about +-50 %
                  # (the +- is a std over videos; the paper does not give their number)
                  "paper_wd_over_gp_warping_range": [0.0005 / 0.061, 0.0015 / 0.061] if t == "T2" else None}
              for t in TABLES}
    return {
        "profile": cfg.profile,
        "scale": {"frame_size": cfg.warp_frame_size, "latent_shape": list(lat.shape),
                  "vae": "vanilla (notebook 20), factor 4", "unet": list(cfg.warp_channels),
                  "train_steps": {"indep": cfg.warp_train_steps, "gp": cfg.warp_gp_finetune_steps,
                                  "indep_cont": cfg.warp_gp_finetune_steps},
                  "batch": cfg.warp_batch, "rff_features": cfg.warp_rff_features, "frames": cfg.warp_frames,
                  "videos_per_table": cfg.warp_videos, "ddim_steps": cfg.warp_steps,
                  "guided_steps": cfg.warp_guided_steps, "guidance": cfg.warp_guidance},
        "conventions": "WE = sum M |y_later(p + F(p)) - y_ref(p)|^2 / (C sum M), bilinear warp of the later frame, "
                       "M = in-frame; latent = scaled latents, pixel = images in [-1, 1]; table WE = mean over frames "
                       "1..T-1 of the first-frame error, mean ± std over videos; PSNR peak 2, SSIM data range 2, MSE "
                       "on [0, 1]; T2 = integer latent-pixel pans (x4 SR, the paper's Table 2 is inpainting), T3 = "
                       "synthetic sub-pixel pan/rotation/zoom/elastic with exact flows (the paper: real videos, RAFT "
                       "flows)",
        "stereo_check": stereo,
        "noise_statistics": stat_rows,
        "cost": cost,
        "cost_paper": {"gp_ms_per_1024_frame_gpu": 39, "hiwyn_ms_per_frame_quoted": 629, "gp_1000_warps_ms": 46},
        "train_seconds": train_seconds,
        "model": "x0-residual over the encoded bicubic input (ResidualSR); the paper fine-tunes SDXL and predicts "
                 "epsilon",
        "gp_neighbour_correlation_truncated_kernel": NW.truncated_correlation(
            1.0, truncation=cfg.warp_rff_truncation),
        "tables": summary_tables,
        "table1_single_frame_T3": table1,
        "table1_paper_sr": {"gp": {"ssim": .770, "mse": .004}, "indep": {"ssim": .785, "mse": .004}},
        "ratios": ratios,
        "guidance_diagnosis": diagnosis,
    }


def write_outputs(metrics: dict, we: list[dict], out_dir) -> None:
    """``metrics/40_noise_warping.json`` and ``metrics/40_noise_warping_we.csv`` under ``out_dir``."""
    save_json(metrics, out_path(out_dir, "metrics", "40_noise_warping.json"))
    save_csv(we, out_path(out_dir, "metrics", "40_noise_warping_we.csv"))


def run(cfg: Config, device: str = "auto", out_dir=".") -> dict:
    """The whole stage (what the notebook does, without figures); returns the metrics dict."""
    dev = pick_device(device, cfg.deterministic)
    seed_everything(cfg.seed)
    videos = make_videos(cfg)
    stereo, _ = stereo_check()
    stat_rows, _ = noise_statistics(cfg)
    cost = bench(cfg, dev)
    lat = load_inputs(cfg, dev, out_dir)
    models, _histories, train_seconds = train_models(cfg, lat, out_dir)
    tables = {table: run_table(cfg, videos[table], lat, models) for table in TABLES}
    summary_tables = summarise_tables(cfg, tables)
    we = we_rows(cfg, tables)
    diagnosis, _ = guidance_diagnosis(cfg, tables, lat.factor)
    metrics = summary(cfg, lat, stereo, stat_rows, cost, train_seconds, summary_tables, diagnosis)
    write_outputs(metrics, we, out_dir)
    return metrics
