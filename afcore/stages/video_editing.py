"""DVC stage ``video_editing`` (notebooks/41_video_editing.py): AF-LDM's warping-equivariant video editing (Table 6).

Steps, in the order ``run`` calls them (the notebook calls the same ones and plots in between):

1. ``load_inputs``: the natural32 training crops, the af_ldm stage's VAEs and U-Nets (made class-conditional with
   classes 0 = null, 1 = photo, 2 = sepia) and each VAE's latent scale (unit standard deviation).
2. ``finetune_all``: class-conditional fine-tuning of both U-Nets on photo / sepia latents (the AF-LDM keeps its
   equivariance loss with CFA), resumable under ``checkpoints/video/<unet>``.
3. ``make_videos``: synthetic videos with exact flows (pan, rotate, zoom, elastic) and their true sepia edit.
4. ``edit_table``: Table 6's rows (warping errors, edit PSNR, high-frequency ratio against the true edit);
   ``controls``: the input video (raw and through each VAE), each VAE's ceiling (the true edit encoded and
   decoded) and the ground-truth reference (the true edit); ``summarise`` adds per-video paired differences.
5. ``user_clip``: a clip (``video_clip``; ``demo`` = one synthetic video through a GIF) with estimated flows.
6. ``positive_control``: a circular-padding pipeline whose warping error must be float rounding.
7. ``interpolation``: AF-LDM's latent interpolation (appendix B.2), as the paper describes it and as the released
   script runs it, against the true intermediate frames and their VAE ceilings.
8. ``text_path``: the same editing through an SD-layout text-conditional model (``video_sd_model``).
9. ``summarise`` and ``write_outputs``: ``metrics/41_video_editing.json`` and ``metrics/41_video_editing_we.csv``.

Every random draw is seeded as the notebook's was: batches from ``seed * 100003 + step`` (then ``+ 1`` for the
loss's timesteps, noise and shift), the interpolation's hole fill from ``seed + 5``, all on the run's device.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import torch
from tqdm.auto import tqdm

from afcore import data, editing as ED, flow as FL, ldm, vae as VAE
from afcore.stages.common import (ConfigError, StageConfig, Timer, make_generator, mean_sem, out_path,
                                  paired_mean_sem, pick_device, to01, verdict)
from afcore.utils import save_csv, save_gif, save_json, seed_everything

NAME = "41_video_editing"
FIG = f"figures/{NAME}"
CLIPS = "clips"  # your own clips live here: a declared DVC dependency of the stage
# model name -> (VAE checkpoint, af_ldm U-Net checkpoint)
MODELS = {"standard LDM": ("vanilla", "ldm_vanilla_vae"), "AF-LDM": ("af_vae", "af_ldm")}
# synthetic videos cycle through these motions
# (pans are whole pixels per frame, so the metric's bilinear warp is exact on them and the true edit's error is ~0)
KINDS = [("pan", {"speed": 1.0, "integer": True}), ("rotate", {"degrees": 2.0}), ("zoom", {"factor": 1.015}), ("elastic", {})]
# Table 6 rows: (row, model, CFA in inversion, CFA in generation)
ROWS = [("standard LDM, no CFA", "standard LDM", False, False),
        ("standard LDM + CFA", "standard LDM", True, True),
        ("AF-LDM, no CFA", "AF-LDM", False, False),
        ("AF-LDM + CFA", "AF-LDM", True, True),
        ("AF-LDM, per-frame inversion, CFA in generation", "AF-LDM", False, True)]
EDIT_LABEL = 2  # sepia
CONVENTIONS = ("WE_nb = mean over neighbouring pairs of sum M |y_j(p + B_{j+1}(p)) - y_{j+1}(p)|^2 / (C sum M), "
               "B = exact backward flow, bilinear warp, M = in-frame; images in [-1, 1] (the [0, 1] column is / 4); "
               "WE vs first: the same against frame 0 with F_{0->j}; latent WE_nb on the scaled 8x8 latents with "
               "the analytic latent flow; edit PSNR peak 2 against sepia(frame); HF ratio = the output's energy "
               "above half Nyquist (either axis, Hann-windowed FFT, channel means removed) over the true edit's, "
               "per video (1 = as detailed as the true edit, < 1 blurrier); mean ± s.e.m. over videos; "
               "differences paired per video, resolved when |diff| > 2 s.e.")
GROUND_TRUTH = "ground-truth reference (true edit)"
# paired contrasts of Table 6 rows and controls (a, b): a minus b per video; a metric missing from either row (the
# true edit's PSNR against itself) is skipped
CONTRASTS = [("AF-LDM + CFA", "standard LDM + CFA"), ("AF-LDM, no CFA", "standard LDM, no CFA"),
             ("standard LDM + CFA", "standard LDM, no CFA"), ("AF-LDM + CFA", "AF-LDM, no CFA"),
             ("AF-LDM + CFA", "AF-LDM, per-frame inversion, CFA in generation"),
             ("standard LDM + CFA", "standard LDM VAE ceiling: true edit"),
             ("AF-LDM + CFA", "AF-LDM VAE ceiling: true edit"),
             ("standard LDM + CFA", GROUND_TRUTH), ("AF-LDM + CFA", GROUND_TRUTH),
             ("AF-LDM VAE ceiling: true edit", "standard LDM VAE ceiling: true edit")]
CONTRAST_METRICS = ("we_nb", "edit_psnr_db", "hf_ratio")
INTERP_LABELS = {"paper": "slerp + attention blend (paper)",
                 "released": "a's splat by alpha F, attention from a (released code)"}
TABLE6_PAPER = {"FRESCO": 0.325, "TokenFlow": 0.064, "FLATTEN": 0.036, "Ours (SD)": 0.094, "Ours (AF-SD)": 0.056,
                "ratio_af_over_sd": 0.056 / 0.094}


@dataclass(frozen=True)
class Config(StageConfig):
    SECTIONS = ("base", "video")
    profile: str = "cpu"
    seed: int = 0
    device: str = "auto"
    video_frame_size: int = 32
    video_finetune_steps: int = 300
    video_batch: int = 32
    video_lr: float = 0.001
    video_ema_decay: float = 0.99
    video_eq_weight: float = 1.0
    video_cfa_detach: bool = True
    video_label_dropout: float = 0.1
    video_strength: float = 0.7
    video_steps: int = 20
    video_cfg: float = 3.0
    video_frames: int = 8
    video_videos: int = 8
    video_sd_model: str = ""
    video_sd_alias_free: bool = True
    video_sd_prompts: tuple[str, ...] = field(default=("", "a sepia photo"))
    video_clip: str = "demo"

    def check(self) -> None:
        def bad(key, allowed):
            raise ConfigError(f"video.{key} must be {allowed}, got {getattr(self, key)!r}")

        clip = PurePosixPath(self.video_clip)
        if self.video_clip not in ("", "demo") and (clip.is_absolute() or clip.parts[:1] != (CLIPS,)
                                                     or ".." in clip.parts or len(clip.parts) < 2):
            bad("video_clip", f"'demo', '' (skip) or a path inside {CLIPS}/ (the folder is a DVC dependency of the "
                              "stage, so a new or changed clip re-runs it)")
        if self.video_frame_size < 8 or self.video_frame_size % 8:
            bad("video_frame_size", "a multiple of 8, >= 8 (VAE x4 and U-Net x2 strides)")
        if self.video_finetune_steps < 0:
            bad("video_finetune_steps", ">= 0")
        if self.video_batch < 1:
            bad("video_batch", ">= 1")
        if not self.video_lr > 0:
            bad("video_lr", "> 0")
        if not 0 < self.video_ema_decay < 1:
            bad("video_ema_decay", "in (0, 1)")
        if self.video_eq_weight < 0:
            bad("video_eq_weight", ">= 0")
        if not isinstance(self.video_cfa_detach, bool):
            bad("video_cfa_detach", "true or false")
        if not 0 <= self.video_label_dropout <= 1:
            bad("video_label_dropout", "in [0, 1]")
        if not 0 < self.video_strength <= 1:
            bad("video_strength", "in (0, 1]")
        if self.video_steps < 1:
            bad("video_steps", ">= 1")
        if int(self.video_steps * self.video_strength) < 1:
            raise ConfigError(f"video.video_steps * video.video_strength must be >= 1 (at least one inverted step), "
                              f"got {self.video_steps} * {self.video_strength}")
        if self.video_cfg < 0:
            bad("video_cfg", ">= 0")
        if self.video_frames < 3:
            bad("video_frames", ">= 3 (the interpolation needs a frame between its two ends)")
        if self.video_videos < 1:
            bad("video_videos", ">= 1")
        if len(self.video_sd_prompts) != 2:
            bad("video_sd_prompts", "two prompts [inversion prompt, edit prompt]")


# ----------------------------------------------------------------------------------------------- 1. inputs
@dataclass
class Models:
    """Both models' VAEs, latent scales and (class-conditional) U-Nets on ``device``."""
    vaes: dict
    scales: dict
    unets: dict
    factor: int
    device: torch.device

    @torch.no_grad()
    def encode(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Scaled latents of images x (N, 3, H, W) in [-1, 1], in chunks of 256, on the device."""
        return torch.cat([ldm.encode_latents(self.vaes[name], x[i:i + 256].to(self.device))
                          for i in range(0, len(x), 256)]) * self.scales[name]

    @torch.no_grad()
    def decode(self, name: str, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.vaes[name].decode(z[i:i + 256].to(self.device) / self.scales[name]).sample
                          for i in range(0, len(z), 256)]).clamp(-1, 1)


def load_inputs(cfg: Config, device, root) -> tuple[Models, torch.Tensor]:
    """(models, natural32 training crops): the af_ldm stage's checkpoints, U-Nets made class-conditional (3 classes)."""
    from diffusers import AutoencoderKL, UNet2DModel

    from afcore.surgery import load_alias_free

    root, dev = Path(root), torch.device(device)
    train_images = data.load_prepared("natural32", root=str(root / "data"))["train"]
    vaes, scales, unets = {}, {}, {}
    for name, (vae_key, unet_key) in MODELS.items():
        for p in (root / "checkpoints/vae" / vae_key, root / "checkpoints/ldm" / unet_key / "unet"):
            if not p.exists():
                raise FileNotFoundError(f"{p} not found: run the af_vae and af_ldm stages first (`dvc repro af_ldm`)")
        vaes[name] = load_alias_free(AutoencoderKL, root / "checkpoints/vae" / vae_key).eval().to(dev)
        with torch.no_grad():
            z = ldm.encode_latents(vaes[name], train_images.to(dev))
        scales[name] = float(1 / z.std())
        unets[name] = ED.class_conditional(load_alias_free(UNet2DModel, root / "checkpoints/ldm" / unet_key / "unet"),
                                           3).to(dev)
    return Models(vaes, scales, unets, VAE.factor(vaes["AF-LDM"]), dev), train_images


# -------------------------------------------------------------------------------------------- 2. fine-tuning
def finetune(cfg: Config, models: Models, name: str, train_images: torch.Tensor, sepia_train: torch.Tensor, root):
    """Fine-tune ``models.unets[name]`` class-conditionally (half photo, half sepia, ``video_label_dropout`` null)
    with the LDM loss (+ equivariance with CFA for the AF-LDM); returns (EMA U-Net, loss history)."""
    from afcore.train import WEIGHT_DECAY, prepare_run_dir, train_loop

    dev = models.device
    z_photo, z_sepia = models.encode(name, train_images), models.encode(name, sepia_train)
    eq = cfg.video_eq_weight if name == "AF-LDM" else 0.0
    fp = dict(model=MODELS[name], steps=cfg.video_finetune_steps, batch=cfg.video_batch, lr=cfg.video_lr,
              ema=cfg.video_ema_decay, eq=eq, dropout=cfg.video_label_dropout, seed=cfg.seed,
              scale=round(models.scales[name], 6), cfa_detach=cfg.video_cfa_detach, weight_decay=WEIGHT_DECAY)
    run_dir = prepare_run_dir(Path(root) / "checkpoints/video" / MODELS[name][1], fp)
    wrapped = ED.Conditioned(models.unets[name])
    sched = ldm.make_scheduler("ddpm")
    n, b = len(z_photo), cfg.video_batch

    def get_batch(step):
        batch_seed = cfg.seed * 100003 + step
        g = make_generator(batch_seed, dev)
        i = torch.randint(0, n, (b,), generator=g, device=dev)
        label = 1 + (torch.rand(b, generator=g, device=dev) < 0.5).long()  # half photo (1), half sepia (2)
        z = torch.where((label == 2)[:, None, None, None], z_sepia[i], z_photo[i])
        label = torch.where(torch.rand(b, generator=g, device=dev) < cfg.video_label_dropout, 0, label)
        return z, label, batch_seed

    def loss_fn(model, batch, step):
        z, label, s = batch
        model.labels = label
        return ldm.ldm_loss(model, z, sched, make_generator(int(s) + 1, z.device), eq_weight=eq, cfa=True,
                            cfa_detach=cfg.video_cfa_detach)

    model, ema, hist = train_loop(wrapped, loss_fn, get_batch, steps=cfg.video_finetune_steps, lr=cfg.video_lr,
                                  ckpt_dir=run_dir, ckpt_every=max(1, cfg.video_finetune_steps // 3),
                                  ema_decay=cfg.video_ema_decay, weight_decay=WEIGHT_DECAY, device=str(dev), desc=name,
                                  log_csv=run_dir / "loss.csv")
    return (ema or model).unet.to(dev).eval(), hist


def finetune_all(cfg: Config, models: Models, train_images: torch.Tensor, root) -> tuple[dict, dict]:
    """Fine-tune both U-Nets (replacing ``models.unets``); returns (loss histories, training seconds) by model."""
    sepia_train = ED.sepia(train_images)
    histories, train_seconds = {}, {}
    for name in MODELS:
        models.unets[name], histories[name] = finetune(cfg, models, name, train_images, sepia_train, root)
        train_seconds[name] = sum(r["seconds"] for r in histories[name])
    return histories, train_seconds


# ------------------------------------------------------------------------------------------------ 3. videos
@dataclass
class Videos:
    videos: list          # afcore.flow.Video, one per video
    frames: torch.Tensor  # (V, F, 3, S, S) on the CPU
    truth: torch.Tensor   # sepia(frames): the true edit
    back_img: torch.Tensor  # (F-1, V, 2, S, S): backward flows j+1 -> j
    first_img: torch.Tensor  # (F-1, V, 2, S, S): flows 0 -> j
    back_lat: torch.Tensor  # backward flows at latent resolution


def make_videos(cfg: Config, factor: int) -> Videos:
    S, nf = cfg.video_frame_size, cfg.video_frames
    videos = []
    for i in range(cfg.video_videos):
        kind, kw = KINDS[i % len(KINDS)]
        videos.append(FL.synthetic_video(kind, S, nf, data.PHOTOS[(3 * i) % len(data.PHOTOS)],
                                         seed=cfg.seed + 300 + i, **kw))
    frames = torch.stack([v.frames for v in videos])
    back_img = torch.stack([torch.cat([v.flow(j + 1, j) for j in range(nf - 1)]) for v in videos], 1)
    first_img = torch.stack([v.flows("first") for v in videos], 1)
    back_lat = torch.stack([torch.cat([v.flow(j + 1, j, scale=factor) for j in range(nf - 1)]) for v in videos], 1)
    return Videos(videos, frames, ED.sepia(frames), back_img, first_img, back_lat)


def we_nb(y: torch.Tensor, back: torch.Tensor) -> torch.Tensor:
    """y (V, F, C, H, W); back (F-1, V, 2, H, W): per-video mean over pairs of WE(y_j -> y_{j+1})."""
    return torch.stack([FL.warp_error(y[:, j], y[:, j + 1], back[j]) for j in range(y.shape[1] - 1)]).mean(0)


def we_first(y: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    return torch.stack([FL.warp_error(y[:, j], y[:, 0], first[j - 1]) for j in range(1, y.shape[1])]).mean(0)


def psnr2(y: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """PSNR (peak 2) per image over the trailing (C, H, W): (V, F)."""
    return 10 * torch.log10(4 / ((y - truth) ** 2).flatten(2).mean(2))


def hf_energy(y: torch.Tensor) -> torch.Tensor:
    """Energy above half Nyquist (either axis) per video, y (V, F, C, H, W) -> (V,): channel means removed and a
    2-D Hann window applied first, so the frame borders' wrap-around jump does not count as detail."""
    h, w = y.shape[-2:]
    win = torch.hann_window(h, periodic=False, dtype=torch.float64)[:, None] * \
        torch.hann_window(w, periodic=False, dtype=torch.float64)[None]
    x = y.double() - y.double().mean((-1, -2), keepdim=True)
    e = torch.fft.fft2(x * win).abs() ** 2
    fy, fx = torch.fft.fftfreq(h).abs(), torch.fft.fftfreq(w).abs()
    hi = ((fy[:, None] > 0.25) | (fx[None, :] > 0.25)).double()
    return (e * hi).flatten(1).sum(1)


def hf_ratio(y: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per video: high-frequency energy of y over that of the true edit (V,). A blurry output scores < 1, so a low
    warping error bought by blur shows here."""
    return (hf_energy(y) / hf_energy(truth)).float()


def video_metrics(y: torch.Tensor, vids, latents: torch.Tensor | None = None) -> dict:
    """Per-video metrics of decoded videos y (V, F, 3, S, S) against the true edit: {name: (V,) tensor}."""
    out = {"we_nb": we_nb(y, vids.back_img), "we_first": we_first(y, vids.first_img),
           "edit_psnr_db": psnr2(y, vids.truth).mean(1), "hf_ratio": hf_ratio(y, vids.truth)}
    if latents is not None:
        out["we_nb_latent"] = we_nb(latents.cpu(), vids.back_lat)
    return out


def summarise_row(per_video: dict) -> dict:
    """Mean ± s.e.m. of each per-video metric, the [0, 1]-range WE column, and the per-video values (for paired
    differences). A metric that is not finite (PSNR of the true edit against itself) is None."""
    finite = {k: v for k, v in per_video.items() if torch.isfinite(v).all()}
    row = {k: mean_sem(v) if k in finite else None for k, v in per_video.items()}
    if "we_nb" in per_video:
        row["we_nb_01"] = mean_sem(per_video["we_nb"] / 4)
    row["per_video"] = {k: [float(x) for x in v] for k, v in finite.items()}
    return row


def paired_differences(rows: dict, contrasts, metrics) -> list[dict]:
    """For each (a, b) in ``contrasts`` and each metric: mean ± s.e. of the per-video differences a - b and whether
    it is resolved (|diff| > 2 s.e.). ``key`` ("a minus b, metric") names the entry for README markers."""
    out = []
    for a, b in contrasts:
        for m in metrics:
            if m not in rows[a]["per_video"] or m not in rows[b]["per_video"]:
                continue
            d, se = paired_mean_sem(rows[a]["per_video"][m], rows[b]["per_video"][m])
            out.append({"key": f"{a} minus {b}, {m}", "a": a, "b": b, "metric": m, "diff": d, "sem": se,
                        "resolved": verdict(d, se) != "not resolved"})
    return out


# -------------------------------------------------------------------------------------------- 4. Table 6
def edit_table(cfg: Config, models: Models, vids: Videos) -> tuple[list[dict], dict]:
    """Table 6's rows: edit every video, decode; returns (rows, decoded outputs by row (V, F, 3, S, S) on the CPU)."""
    S, f, v, nf = cfg.video_frame_size, models.factor, cfg.video_videos, cfg.video_frames
    results, outputs = [], {}
    for row, name, cfa_inv, cfa_gen in tqdm(ROWS, desc="Table 6 rows"):
        z = models.encode(name, vids.frames.flatten(0, 1)).reshape(v, nf, -1, S // f, S // f)
        with Timer(models.device) as t:
            edited = ED.edit_latents(models.unets[name], z, cfg.video_steps, cfg.video_strength,
                                     edit_label=EDIT_LABEL, cfg=cfg.video_cfg, cfa_inversion=cfa_inv,
                                     cfa_generation=cfa_gen)
        y = models.decode(name, edited.flatten(0, 1)).reshape(vids.frames.shape).cpu()
        outputs[row] = y
        results.append({"row": row, "model": name, "cfa_inversion": cfa_inv, "cfa_generation": cfa_gen,
                        **summarise_row(video_metrics(y, vids, edited)), "sec_per_frame": t.seconds / (v * nf)})
    return results, outputs


def controls(models: Models, vids: Videos) -> list[dict]:
    """The rows every model row is read against, with the same metrics: the unedited input video (its WE is the
    motion's own, and its PSNR says how far the edit moves the colours), the input through each VAE (what the
    autoencoder alone does to it), each VAE's ceiling (the true edit encoded and decoded: the best a model in those
    latents can return) and the ground-truth reference (the true edit itself: its WE is the metric's own bilinear
    interpolation error, ~0 on the whole-pixel pans)."""
    S, f, v, nf = vids.frames.shape[-1], models.factor, *vids.frames.shape[:2]
    out = [{"row": "input video (unedited)", "model": "", **summarise_row(video_metrics(vids.frames, vids))}]
    for name in MODELS:
        for label, video in (("input video", vids.frames), ("ceiling: true edit", vids.truth)):
            z = models.encode(name, video.flatten(0, 1))
            y = models.decode(name, z).reshape(vids.frames.shape).cpu()
            lat = z.reshape(v, nf, -1, S // f, S // f)
            out.append({"row": f"{name} VAE {label}", "model": name, **summarise_row(video_metrics(y, vids, lat))})
    out.append({"row": GROUND_TRUTH, "model": "", **summarise_row(video_metrics(vids.truth, vids))})
    gt = out[-1]["per_video"]["we_nb"]
    out[-1]["we_nb_by_kind"] = {k: float(torch.tensor(gt[i::len(KINDS)]).mean()) for i, (k, _) in enumerate(KINDS)
                                if i < len(gt)}
    return out


# ------------------------------------------------------------------------------------------- 5. user clip
def user_clip(cfg: Config, models: Models, vids: Videos, root) -> tuple[dict | None, dict]:
    """Edit ``video_clip`` (a file or folder; relative paths from the workspace root; ``demo``: synthetic video 0
    written to ``figures/41_video_editing/demo_clip.gif`` and read back) with CFA, warping errors from Farneback flows
    with occlusions masked. Returns (metrics or None when ``video_clip`` is empty, {"input"/model: (1, F, 3, S, S)})."""
    if not cfg.video_clip:
        return None, {}
    demo_index = 0
    if cfg.video_clip == "demo":
        clip_path = out_path(root, FIG, "demo_clip.gif")
        save_gif([to01(x) for x in vids.frames[demo_index]], clip_path, fps=4)
    else:
        clip_path = Path(root) / cfg.video_clip
        if not clip_path.exists():
            raise ConfigError(f"video.video_clip={cfg.video_clip!r}: {clip_path} does not exist (a video file, GIF "
                              f"or folder of frames inside {CLIPS}/; 'demo' or '' to skip)")
    S, f = cfg.video_frame_size, models.factor
    clip = FL.read_video(str(clip_path), size=S, max_frames=cfg.video_frames)
    if len(clip) < 2:
        raise ConfigError(f"video.video_clip={cfg.video_clip!r} has {len(clip)} frame(s); at least 2 are needed")
    fwd = FL.farneback_flow(clip)  # (F-1, 2, S, S): j -> j+1
    bwd = FL.farneback_flow(clip.flip(0)).flip(0)  # j+1 -> j
    # the error compares frame j+1 with frame j warped by the flow j+1 -> j, so the mask lives on frame j+1's grid
    occl = torch.stack([FL.consistency_mask(bwd[j:j + 1], fwd[j:j + 1])[0] for j in range(len(fwd))])
    clip_back = bwd[:, None]  # (F-1, 1, 2, S, S), as we_nb expects

    def clip_we(y):  # y (1, F, C, S, S): neighbouring-frame WE with estimated flows, occluded pixels masked out
        return float(torch.stack([FL.warp_error(y[:, j], y[:, j + 1], clip_back[j], mask=occl[j][None])
                                  for j in range(y.shape[1] - 1)]).mean())

    result = {"path": cfg.video_clip, "frames": len(clip), "flow": "Farneback (OpenCV), occlusions masked",
              "we_nb_input": clip_we(clip[None])}
    clip_out = {"input": clip[None]}
    for name in MODELS:
        zc = models.encode(name, clip).reshape(1, len(clip), -1, S // f, S // f)
        edited = ED.edit_latents(models.unets[name], zc, cfg.video_steps, cfg.video_strength, edit_label=EDIT_LABEL,
                                 cfg=cfg.video_cfg)
        clip_out[name] = models.decode(name, edited.flatten(0, 1)).reshape(1, len(clip), 3, S, S).cpu()
        result[f"we_nb {name} + CFA"] = clip_we(clip_out[name])
    if cfg.video_clip == "demo":  # the same video with its exact flows (the table's metric): how far the estimate is
        exact = {"flow_epe_px": float((bwd - vids.back_img[:len(bwd), demo_index]).norm(dim=1).mean())}
        for name in MODELS:
            exact[f"we_nb {name} + CFA, exact flow"] = float(
                we_nb(clip_out[name], vids.back_img[:, demo_index:demo_index + 1]))
        result["demo_exact_flow"] = exact
    return result, clip_out


# ------------------------------------------------------------------------------------- 6. positive control
def control(cfg: Config, vids: Videos, device, circular: bool) -> float:
    """WE_nb of a random-weight alias-free VAE + U-Net pipeline on a circular 8 px/frame pan; with ``circular``
    padding every operation is exactly shift-equivariant and the error is float rounding."""
    from afcore.surgery import make_alias_free

    S, nf, dev = cfg.video_frame_size, cfg.video_frames, torch.device(device)
    torch.manual_seed(cfg.seed)
    vae_c = make_alias_free(VAE.small_vae((8, 16, 16), latent_channels=4, groups=4)).eval().to(dev)
    unet_c = ED.class_conditional(make_alias_free(ldm.latent_unet((16, 32), 4, S // 4, 8)).eval(), 3).eval().to(dev)
    if circular:
        ED.circular(vae_c)
        ED.circular(unet_c)
    x = vids.frames[0, 0:1]
    clip = torch.stack([torch.roll(x, (0, 8 * j), dims=(-2, -1)) for j in range(nf)], 1).to(dev)
    with torch.no_grad():
        z = vae_c.encode(clip.flatten(0, 1)).latent_dist.mean.reshape(1, nf, 4, S // 4, S // 4)
        out = ED.edit_latents(unet_c, z, cfg.video_steps, cfg.video_strength, edit_label=EDIT_LABEL, cfg=cfg.video_cfg)
        y = vae_c.decode(out.flatten(0, 1)).sample.reshape(clip.shape).cpu()
    back = torch.zeros(nf - 1, 1, 2, S, S, device="cpu")
    back[:, :, 1] = -8.0
    return float(we_nb(y, back).mean())


def positive_control(cfg: Config, vids: Videos, device) -> dict:
    return {"circular padding": control(cfg, vids, device, True), "zero padding": control(cfg, vids, device, False)}


# ---------------------------------------------------------------------------------------- 7. interpolation
def interpolation(cfg: Config, models: Models, vids: Videos) -> tuple[dict, dict, list[float], list[int]]:
    """Latent interpolation between frames 0 and ``gap`` of the pan and rotation videos, as the paper describes it
    and as the released script runs it (``afcore.editing.interpolate``'s variants), beside its controls: the true
    intermediate frames (ground truth) and the same frames through each VAE (ceiling). Returns ({"rows",
    "differences"}, decoded frames (P, A, 3, S, S) by row, alphas, video indices)."""
    S, f, dev = cfg.video_frame_size, models.factor, models.device
    frames, videos = vids.frames, vids.videos
    gap = min(4, cfg.video_frames - 1)
    alphas = [k / gap for k in range(gap + 1)]
    pairs = [i for i in range(cfg.video_videos) if KINDS[i % len(KINDS)][0] in ("pan", "rotate")]
    truth = frames[pairs, :gap + 1]
    steps_back = [torch.cat([videos[i].flow(k + 1, k) for i in pairs]) for k in range(gap)]

    def metrics(y):  # per pair: PSNR at the inner alphas, smoothness WE, flicker, detail against the true frames
        psnr = psnr2(y, truth)  # (pairs, alphas)
        smooth = torch.stack([FL.warp_error(y[:, k], y[:, k + 1], steps_back[k]) for k in range(gap)]).mean(0)
        return {"psnr_intermediate_db": psnr[:, 1:-1].mean(1), "smoothness_we": smooth, "flicker_db": psnr.std(1),
                "hf_ratio": hf_ratio(y[:, 1:-1], truth[:, 1:-1])}

    rows, interp_frames = {}, {}
    rows["ground truth (true intermediate frames)"] = {"model": "", "variant": "", **summarise_row(metrics(truth))}
    for name in tqdm(MODELS, desc="interpolation"):
        za = models.encode(name, frames[pairs, 0])
        zb = models.encode(name, frames[pairs, gap])
        ceiling = models.decode(name, models.encode(name, truth.flatten(0, 1))).reshape(truth.shape).cpu()
        rows[f"{name} VAE ceiling"] = {"model": name, "variant": "", **summarise_row(metrics(ceiling))}
        f_ab = torch.cat([videos[i].flow(0, gap) for i in pairs]).to(dev)
        f_ba = torch.cat([videos[i].flow(gap, 0) for i in pairs]).to(dev)
        for variant, label in INTERP_LABELS.items():
            out = ED.interpolate(models.unets[name], za, zb, f_ab, f_ba, alphas, cfg.video_steps, f,
                                 generator=make_generator(cfg.seed + 5, dev), variant=variant)
            y = models.decode(name, out.flatten(0, 1)).reshape(len(pairs), len(alphas), 3, S, S).cpu()
            interp_frames[f"{name}, {label}"] = y
            rows[f"{name}, {label}"] = {"model": name, "variant": variant, **summarise_row(metrics(y))}
    paper, released = (f"{{}}, {INTERP_LABELS[v]}" for v in ("paper", "released"))
    contrasts = [(paper.format(m), released.format(m)) for m in MODELS]
    contrasts += [(v.format("AF-LDM"), v.format("standard LDM")) for v in (paper, released)]
    diffs = paired_differences(rows, contrasts, ("psnr_intermediate_db", "smoothness_we", "hf_ratio"))
    return ({"rows": [{"row": k, **v} for k, v in rows.items()], "differences": diffs}, interp_frames, alphas,
            pairs)


# ------------------------------------------------------------------------------------------- 8. text path
def text_path(cfg: Config, vids: Videos, device, root) -> dict | None:
    """WE_nb of video 0 edited through an SD-layout model (``video_sd_model``: folder, hub id or ``standin``) with
    CFA off and on; None when ``video_sd_model`` is empty."""
    if not cfg.video_sd_model:
        return None
    import importlib.util

    from afcore import text_video as TV

    S, nf, dev = cfg.video_frame_size, cfg.video_frames, torch.device(device)
    src = cfg.video_sd_model
    if src == "standin":
        src = str(TV.save_standin(Path(root) / "checkpoints/video/sd_standin", seed=cfg.seed))
    has_text = importlib.util.find_spec("transformers") is not None
    sd = TV.load_text_model(src, alias_free=cfg.video_sd_alias_free, with_text=has_text)
    sd["unet"].to(dev)
    sd["vae"].to(dev)
    if has_text:
        sd["text_encoder"].to(dev)
        uncond_e, cond_e = (TV.encode_prompt(sd, [p]) for p in cfg.video_sd_prompts)
    else:  # no transformers: random prompt embeddings of the U-Net's width stand in (said in the output)
        g = make_generator(cfg.seed, dev)
        dim = sd["unet"].config.cross_attention_dim
        uncond_e, cond_e = (torch.randn(1, 8, dim, generator=g, device=dev) for _ in range(2))
    with torch.no_grad():
        zs = sd["vae"].encode(vids.frames[:1].flatten(0, 1).to(dev)).latent_dist.mean * sd["vae"].config.scaling_factor
        zs = zs.reshape(1, nf, *zs.shape[1:])
    we = {}
    for cfa in (False, True):
        out = ED.edit_latents(sd["unet"], zs, cfg.video_steps, cfg.video_strength,
                              edit_label={"encoder_hidden_states": cond_e},
                              null={"encoder_hidden_states": uncond_e}, cfg=cfg.video_cfg,
                              cfa_inversion=cfa, cfa_generation=cfa)
        with torch.no_grad():
            y = sd["vae"].decode(out.flatten(0, 1) / sd["vae"].config.scaling_factor).sample.clamp(-1, 1)
        we[f"CFA {'on' if cfa else 'off'}"] = float(we_nb(y.reshape(1, nf, 3, S, S).cpu(), vids.back_img[:, :1]).mean())
    return {"model": cfg.video_sd_model, "alias_free": cfg.video_sd_alias_free, "text_encoder": has_text, "we_nb": we}


# ------------------------------------------------------------------------------------------ 9. outputs
def summarise(cfg: Config, factor: int, results: list[dict], control_rows: list[dict], control_we: dict,
              interp: dict, text: dict | None, clip: dict | None, train_seconds: dict) -> dict:
    S = cfg.video_frame_size
    rows = {r["row"]: r for r in results + control_rows}
    std_cfa, af_cfa = rows["standard LDM + CFA"], rows["AF-LDM + CFA"]
    return {
        "profile": cfg.profile,
        "scale": {"frame_size": S, "latent": [4, S // factor, S // factor], "finetune_steps": cfg.video_finetune_steps,
                  "batch": cfg.video_batch, "videos": cfg.video_videos, "frames": cfg.video_frames,
                  "ddim_steps": cfg.video_steps, "strength": cfg.video_strength, "cfg": cfg.video_cfg},
        "conventions": CONVENTIONS,
        "table6": results,
        "controls": control_rows,
        "differences": paired_differences(rows, CONTRASTS, CONTRAST_METRICS),
        "table6_paper": TABLE6_PAPER,
        "ratio_af_over_standard_with_cfa": af_cfa["we_nb"][0] / std_cfa["we_nb"][0],
        "positive_control_we_nb": control_we,
        "interpolation": interp,
        "text_path": text,
        "user_clip": clip,
        "train_seconds": train_seconds,
    }


def write_outputs(summary: dict, out_dir) -> None:
    """``metrics/41_video_editing.json`` (everything) and ``metrics/41_video_editing_we.csv`` (Table 6 and its
    controls, DVC plot)."""
    save_json(summary, out_path(out_dir, "metrics", f"{NAME}.json"))
    def first(v):  # None (the true edit's PSNR against itself) -> an empty cell
        return "" if v is None else v[0]

    save_csv([{"row": r["row"], "we_nb": r["we_nb"][0], "we_nb_sem": r["we_nb"][1], "we_first": r["we_first"][0],
               "edit_psnr_db": first(r["edit_psnr_db"]), "hf_ratio": r["hf_ratio"][0]}
              for r in summary["table6"] + summary["controls"]],
             out_path(out_dir, "metrics", f"{NAME}_we.csv"))


def difference_markdown(diffs: list[dict], digits: dict | None = None) -> str:
    """A Markdown table of paired differences: a - b, mean ± s.e., and the verdict."""
    digits = digits or {}
    lines = ["| a | b | metric | a - b (mean ± s.e.) | verdict |", "|---|---|---|---|---|"]
    for d in diffs:
        k = digits.get(d["metric"], 4)
        word = verdict(d["diff"], d["sem"])
        word = "not resolved (|diff| <= 2 s.e.)" if word == "not resolved" else f"resolved: a {word}"
        lines.append(f"| {d['a']} | {d['b']} | {d['metric']} | {d['diff']:+.{k}f} ± {d['sem']:.{k}f} | {word} |")
    return "\n".join(lines)


def run(cfg: Config, device: str = "auto", out_dir=".") -> dict:
    """The whole stage: inputs from ``out_dir/data`` and ``out_dir/checkpoints``, checkpoints to
    ``out_dir/checkpoints/video``, metrics to ``out_dir/metrics``; returns the metrics dict."""
    seed_everything(cfg.seed)
    dev = pick_device(device, cfg.deterministic)
    models, train_images = load_inputs(cfg, dev, out_dir)
    _, train_seconds = finetune_all(cfg, models, train_images, out_dir)
    vids = make_videos(cfg, models.factor)
    results, _ = edit_table(cfg, models, vids)
    control_rows = controls(models, vids)
    clip, _ = user_clip(cfg, models, vids, out_dir)
    control_we = positive_control(cfg, vids, dev)
    interp, _, _, _ = interpolation(cfg, models, vids)
    text = text_path(cfg, vids, dev, out_dir)
    summary = summarise(cfg, models.factor, results, control_rows, control_we, interp, text, clip, train_seconds)
    write_outputs(summary, out_dir)
    return summary


__all__ = ["Config", "MODELS", "KINDS", "ROWS", "CONTRASTS", "GROUND_TRUTH", "INTERP_LABELS", "Models", "Videos",
           "load_inputs", "finetune", "finetune_all", "make_videos", "we_nb", "we_first", "psnr2", "hf_energy",
           "hf_ratio", "video_metrics", "summarise_row", "paired_differences", "edit_table", "controls", "user_clip",
           "control", "positive_control", "interpolation", "text_path", "summarise", "write_outputs",
           "difference_markdown", "run"]
