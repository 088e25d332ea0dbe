# %% [markdown]
# # 40 · Warping the noise: temporally consistent video from an image diffusion model (Warped Diffusion)
#
# An image diffusion model applied to every frame of a video flickers: each frame starts from its own noise, so
# textures and details are invented anew each time. Daras et al. (*Warped Diffusion*, NeurIPS 2024) ask what the
# noise of frame $j$ should be so that the outputs move with the video. Write the video as deformations: frame $j$
# is frame $j-1$ seen through a map $T_j$ (the forward flow), $f_j(x) = f_{j-1}(T_j^{-1}(x))$ wherever $T_j^{-1}(x)$
# is inside the frame. If the noise is warped the same way, $\xi_j = \xi_{j-1} \circ T_j^{-1}$, and the
# generator $G$ is *equivariant*, $G(\xi \circ T^{-1}) = G(\xi) \circ T^{-1}$, then the outputs are a video with the
# same motion.
#
# Two obstacles. (1) White noise is not a function: "evaluating it between pixels" means interpolating, which
# lowers its variance and correlates neighbours, and the model then sees a noise it was never trained on (blur).
# Chang et al. (*How I Warped Your Noise*, ICLR 2024, "HIWYN") keep white noise and move it as an *integral*:
# every pixel is the integral of an infinitely fine white field over its square, so a warped pixel is the sum of
# the sub-pixels its square covers, divided by the square root of their number. Warped Diffusion instead uses a
# Gaussian-process noise drawn as a random function (random Fourier features), which can be evaluated *exactly*
# anywhere, and fine-tunes the model to that noise. (2) The network is not equivariant. Warped Diffusion adds
# **equivariance self-guidance**: while frame $j$ is sampled, its current prediction of the clean frame is warped
# back onto frame $j-1$'s grid and pulled toward frame $j-1$'s prediction at the same step.
#
# This notebook builds both ingredients, measures what each noise warp preserves, times them, and reproduces the
# structure of the paper's Tables 2 and 3 on a small conditional latent model (x4 super-resolution of 64 px frames)
# trained here, with videos whose motion, and therefore whose flows, are known exactly.

# %% tags=["parameters"]
profile = "cpu"
seed = 0
device = "cpu"
warp_frame_size = 64
warp_channels = [32, 64, 64]
warp_train_crops = 2000
warp_train_steps = 400
warp_gp_finetune_steps = 120
warp_batch = 16
warp_lr = 0.001
warp_ema_decay = 0.995
warp_ckpt_every = 200
warp_rff_features = 1000
warp_rff_truncation = 2.0
warp_hiwyn_factor = 8
warp_frames = 6
warp_videos = 4
warp_steps = 25
warp_guided_steps = 50
warp_guidance = 1.0
warp_guidance_sweep = [0.0, 0.3, 1.0, 3.0]
warp_stat_draws = 200
warp_bench_sizes = [[128, 128, 4]]
warp_bench_features = 3000
warp_bench_batch = 64
warp_bench_batch_size = [16, 16, 4]
warp_bench_repeats = 3

# %%
import math
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from diffusers import AutoencoderKL
from IPython.display import Markdown, display

from afcore import data, flow as FL, ldm, noise_warp as NW, vae as VAE, video as VID
from afcore.surgery import load_alias_free
from afcore.train import prepare_run_dir, train_loop
from afcore.utils import pick_device, save_csv, save_figure, save_gif, save_json, seed_everything

seed_everything(seed)
dev = pick_device(device)
S = warp_frame_size


def to01(x):
    return ((x.clamp(-1, 1) + 1) / 2).permute(1, 2, 0).cpu().numpy()


def mean_sem(v):
    v = np.asarray(v, dtype=float).ravel()
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0

# %% [markdown]
# ## 1 · Videos whose flow is known exactly
#
# `afcore.flow` renders videos from the photographs that ship with scikit-image. Frame $j$'s pixel $p$ shows the
# photograph at frame-0 coordinates $W_j(p)$ (a pan, a rotation or zoom about the centre, or a smooth elastic
# deformation $W_j(p) = p - a_j D(p)$ with $D$ a sum of low-frequency sinusoids, max $|D| = 1$ px, $a_j$ oscillating;
# its inverse comes from 30 fixed-point iterations). Every flow is then analytic:
# $F_{a\to b}(p) = W_b^{-1}(W_a(p)) - p$. Frames are anti-aliased: each pixel averages 4x4 bicubic samples of an
# area-reduced photo, so a sub-pixel motion is a real sub-pixel motion and not a staircase. Pixel centres are the
# integer coordinates; the latent of a factor-$f$ autoencoder has its sample $u$ at image coordinate $f u$, so the
# latent flow is the image motion rescaled, computed analytically on the latent grid.
#
# Conventions: a flow is $(\Delta y, \Delta x)$ per pixel; the *backward warp* $\mathcal{W}(y_b, F_{a\to b})(p) =
# y_b(p + F_{a\to b}(p))$ pulls frame $b$ onto frame $a$'s grid (bilinear); the *warping error*
# $\mathrm{WE}(y_b, y_a) = \sum_p M(p) \lVert \mathcal{W}(y_b, F_{a\to b})(p) - y_a(p)\rVert^2 / (C \sum_p M(p))$,
# $M$ the pixels whose correspondent is inside the frame. The later frame is interpolated, the reference is not.
# For an integer pan the warp is exact and the ground truth's own WE is 0; for other motions it is the bilinear
# interpolation error, the **floor** no method can beat with this metric.

# %%
HELD_OUT = ("astronaut", "chelsea", "coffee", "rocket", "horse", "cat")  # videos come from these, training from the rest
TRAIN_PHOTOS = tuple(p for p in data.PHOTOS if p not in HELD_OUT)
COMPASS = [(-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1)]
T3_KINDS = [("pan", {"speed": 0.35 * 4}), ("rotate", {}), ("zoom", {}), ("elastic", {})]  # sub-pixel latent pan 0.35


def make_videos(table):
    vids = []
    for i in range(warp_videos):
        photo = HELD_OUT[i % len(HELD_OUT)]
        if table == "T2":  # integer translation: 1 latent pixel (4 image px) per axis and frame, compass direction
            g = torch.Generator().manual_seed(seed + 100 + i)
            dy, dx = COMPASS[int(torch.randint(0, 8, (1,), generator=g, device="cpu"))]
            vids.append(FL.synthetic_video("pan", S, warp_frames, photo, seed=seed + 100 + i,
                                           velocity=(4.0 * dy, 4.0 * dx)))
        else:
            kind, kw = T3_KINDS[i % len(T3_KINDS)]
            vids.append(FL.synthetic_video(kind, S, warp_frames, photo, seed=seed + 200 + i, **kw))
    return vids


videos = {"T2": make_videos("T2"), "T3": make_videos("T3")}
fig, axes = plt.subplots(5, 4, figsize=(8, 10))
show = [("T2 integer pan", videos["T2"][0])] + [(f"T3 {T3_KINDS[i % 4][0]}", videos["T3"][i])
                                                 for i in range(min(4, len(videos["T3"])))]
for r, (name, v) in enumerate(show):
    for c, j in enumerate(np.linspace(0, warp_frames - 1, 4).round().astype(int)):
        axes[r, c].imshow(to01(v.frames[j]))
        axes[r, c].set_title(f"{name}, frame {j}" if c == 0 else f"frame {j}", fontsize=8)
for ax in axes.flat:
    ax.axis("off")
fig.tight_layout()
save_figure(fig, "figures/40_noise_warping/videos.png")
plt.show()

# %% [markdown]
# **A real two-view case.** scikit-image's motorcycle stereo pair comes with a measured disparity $d$; the left
# view's pixel $(y, x)$ appears at $(y, x - d)$ in the right view, so the flow left $\to$ right is $(0, -d)$. Warping
# the right view with it must reproduce the left view on valid pixels, and the opposite sign must not: a check of the
# flow convention on real data. For your own clip, `FL.read_video(path)` reads frames and `FL.farneback_flow(frames)`
# estimates flows with OpenCV (install `opencv-python-headless`); everything below accepts such flows.

# %%
left, right, sflow, svalid = FL.stereo_pair(scale=4)
warped_r, inside_r = FL.backward_warp(right, sflow)
wrong_r, inside_w = FL.backward_warp(right, -sflow)
stereo = {"mean_abs_err_255": float(((warped_r - left).abs().mean(1, keepdim=True) * svalid * inside_r).sum()
                                    / (svalid * inside_r).sum() * 127.5),
          "wrong_sign_mean_abs_err_255": float(((wrong_r - left).abs().mean(1, keepdim=True) * svalid * inside_w)
                                               .sum() / (svalid * inside_w).sum() * 127.5)}
fig, axes = plt.subplots(1, 3, figsize=(11, 3))
for ax, im, t in zip(axes, (left[0], right[0], warped_r[0] * svalid[0]),
                     ("left", "right", "right warped to left (valid)")):
    ax.imshow(to01(im))
    ax.set_title(t)
    ax.axis("off")
save_figure(fig, "figures/40_noise_warping/stereo.png")
plt.show()
stereo

# %% [markdown]
# ## 2 · Warping noise: what each method preserves
#
# - **fixed / resample**: the same noise for every frame, or fresh noise. Neither moves with the video.
# - **nearest / bilinear**: frame 0's noise read at $W_j(p)$ with nearest or bilinear interpolation (positions
#   outside frame 0 get fresh noise). Nearest copies values (duplicates, holes); bilinear averages up to four
#   values with weights $w_k$, so its variance is $\sum_k w_k^2 < 1$ off the grid (1/4 at a half-pixel offset in
#   both axes) and neighbours become correlated.
# - **integral (HIWYN)**: each pixel value $x$ is split into $N\times N$ sub-pixels ($N = 8$),
#   $s = x/N + Z - \bar Z$ with $Z$ i.i.d. $\mathcal{N}(0,1)$ and $\bar Z$ their block mean. The block sum divided by
#   $N$ is again $x$, and, averaged over $x$, the sub-pixels are i.i.d. $\mathcal{N}(0,1)$. Each sub-pixel centre
#   moves with the forward flow and lands in one pixel of the next frame; that pixel gets
#   $\sum s / \sqrt{n}$ over the $n$ sub-pixels that landed in it, a sum of $n$ independent unit normals divided by
#   $\sqrt n$: exactly $\mathcal{N}(0,1)$, independent of its neighbours. Pixels no sub-pixel reaches
#   (disocclusions) get fresh noise. (The paper rasterises each pixel's warped square as polygons; moving sub-pixel
#   centres is the same integral to within the sub-pixel grid.)
# - **GP noise (Warped Diffusion)**: $\xi(x) = \sqrt{2/J} \sum_{j=1}^J w_j \cos(\langle z_j, x\rangle + b_j)$ with
#   $w_j \sim \mathcal{N}(0,1)$, $b_j \sim U(0, 2\pi)$, $z_j \sim \mathcal{N}(0, \ell^{-2} I)$ truncated at
#   $|z| \le 2/\ell$. Its variance is exactly 1 everywhere; its covariance tends to $\exp(-r^2 / 2\ell^2)$ (truncation
#   changes the tails slightly). The paper's length scale $\ell = 2/(\pi R)$ on the unit square of an $R$-pixel grid is
#   $2/\pi \approx 0.64$ pixel, and truncation at $2/\ell = \pi$ rad/pixel puts the highest frequency exactly at
#   Nyquist. **GP warping** evaluates the *same* function at $W_j(p)$: no interpolation at all, and the warped noise
#   has exactly the distribution of the unwarped one. The `gp_*` baselines apply fixed/resample/nearest/bilinear to
#   the GP's grid samples.
#
# Below, every method warps frame 0's noise through a 5°-per-frame rotation (the hardest of our motions for
# interpolation); statistics of frame 2 over `warp_stat_draws` draws, against frame 0. "Preserved" means frame 2's
# statistics equal frame 0's: variance 1, the method's own neighbour correlation (0 for white noise, about 0.27 for
# the GP), the same radial power spectrum.

# %%
NS = 32  # noise grid for the statistics
rot = FL.motion("rotate", NS, degrees=5.0)
to_first_rot = torch.stack([rot.flow(j, 0, (NS, NS))[0] for j in range(3)])[:, None].expand(-1, warp_stat_draws,
                                                                                              -1, -1, -1)
prev_rot = torch.stack([rot.flow(j - 1, j, (NS, NS))[0] for j in (1, 2)])[:, None]
stat_rows, spectra = [], {}
for method in NW.METHODS:
    g = torch.Generator().manual_seed(seed + 11)
    n = NW.noise_video(method, (warp_stat_draws, 1, NS, NS), to_first_rot, prev_rot, generator=g,
                       factor=warp_hiwyn_factor, rff_features=warp_rff_features,
                       rff_truncation=warp_rff_truncation)
    s0, s2 = NW.noise_stats(n[0]), NW.noise_stats(n[2])
    inner = (slice(None), slice(None), slice(6, -6), slice(6, -6))  # away from the disoccluded corners
    s2i = NW.noise_stats(n[2][inner])
    spectra[method] = (s0["spectrum"], s2["spectrum"])
    stat_rows.append({"method": method, "frame0_var": s0["var"], "frame2_var": s2["var"],
                      "frame2_var_inner": s2i["var"], "frame2_var_map_min": s2["var_map_range"][0],
                      "frame2_var_map_max": s2["var_map_range"][1], "frame0_corr_x": s0["corr_x"],
                      "frame2_corr_x": s2["corr_x"], "frame2_corr_y": s2["corr_y"], "frame2_mean": s2["mean"],
                      "spectrum_ratio_max_dev": float((s2["spectrum"][1] / s0["spectrum"][1] - 1).abs().max())})
display(Markdown("| method | var frame 0 | var frame 2 | var frame 2 (inner) | per-pixel var min..max | corr_x frame 0 | "
                 "corr_x frame 2 | corr_y frame 2 | max spectrum ratio dev |\n|---|---|---|---|---|---|---|---|---|\n"
                 + "\n".join(f"| {r['method']} | {r['frame0_var']:.3f} | {r['frame2_var']:.3f} | "
                             f"{r['frame2_var_inner']:.3f} | {r['frame2_var_map_min']:.2f}..{r['frame2_var_map_max']:.2f}"
                             f" | {r['frame0_corr_x']:+.3f} | {r['frame2_corr_x']:+.3f} | {r['frame2_corr_y']:+.3f}"
                             f" | {r['spectrum_ratio_max_dev']:.2f} |" for r in stat_rows)))

# %%
fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
names = [r["method"] for r in stat_rows]
axes[0].bar(names, [r["frame2_var_inner"] for r in stat_rows], color="tab:blue")
axes[0].axhline(1, color="k", lw=0.8)
axes[0].set_title("variance after 2 warps (inner region)")
axes[1].bar(names, [r["frame2_corr_x"] for r in stat_rows], color="tab:orange", label="frame 2")
axes[1].plot(names, [r["frame0_corr_x"] for r in stat_rows], "k_", ms=18, label="frame 0")
axes[1].set_title("lag-1 neighbour correlation")
axes[1].legend()
for ax in axes[:2]:
    ax.tick_params(axis="x", rotation=60)
for method in ("bilinear", "nearest", "hiwyn", "gp_bilinear", "gp_warp"):
    (f0, p0), (f2, p2) = spectra[method]
    axes[2].plot(f2.numpy(), (p2 / p0).numpy(), label=method)
axes[2].axhline(1, color="k", lw=0.8)
axes[2].set_xlabel("frequency (cycles/pixel)")
axes[2].set_title("radial power spectrum, frame 2 / frame 0")
axes[2].legend(fontsize=7)
fig.tight_layout()
save_figure(fig, "figures/40_noise_warping/noise_statistics.png")
plt.show()

# %% [markdown]
# What to read: bilinear loses variance (and gains correlation: its spectrum ratio falls at high frequencies, the
# blur the model will see); nearest keeps variance but duplicates values along the rotation's seams; integral noise
# keeps unit variance, zero correlation and a flat spectrum; GP warping keeps exactly the GP's own statistics. The
# fixed/resample rows preserve everything trivially but do not move with the video. Below, GP and white noise side
# by side (the paper's Fig. 6) and a GIF of each warp following the rotation.

# %%
g = torch.Generator().manual_seed(seed)
white = torch.randn(1, 1, 64, 64, generator=g, device="cpu")
gp = NW.RFFNoise(1, 1, features=warp_rff_features, truncation=warp_rff_truncation, generator=g)(grid_size=(64, 64))
fig, axes = plt.subplots(1, 2, figsize=(7, 3.5))
for ax, im, t in zip(axes, (white, gp), ("white noise", f"GP noise (l = 2/pi px, J = {warp_rff_features})")):
    ax.imshow(im[0, 0], cmap="gray", vmin=-3, vmax=3)
    ax.set_title(t)
    ax.axis("off")
save_figure(fig, "figures/40_noise_warping/noise_samples.png")
plt.show()

gif_methods = ("resample", "bilinear", "hiwyn", "gp_warp")
GS, GF = 48, 12
rot_g = FL.motion("rotate", GS, degrees=3.0)
tf = torch.stack([rot_g.flow(j, 0, (GS, GS))[0] for j in range(GF)])[:, None]
pf = torch.stack([rot_g.flow(j - 1, j, (GS, GS))[0] for j in range(1, GF)])[:, None]
noise_frames = {m: NW.noise_video(m, (1, 1, GS, GS), tf, pf, generator=torch.Generator().manual_seed(seed + 3),
                                  factor=warp_hiwyn_factor, rff_features=warp_rff_features)[:, 0, 0]
                for m in gif_methods}
gif = []
for j in range(GF):
    row = np.concatenate([np.pad(((noise_frames[m][j].clamp(-3, 3) + 3) / 6).numpy(), 2, constant_values=1)
                          for m in gif_methods], 1)
    gif.append(np.kron(row, np.ones((3, 3))))
save_gif(gif, "figures/40_noise_warping/warped_noise.gif", fps=6)
print("figures/40_noise_warping/warped_noise.gif:", " | ".join(gif_methods))

# %% [markdown]
# ## 3 · Cost per frame
#
# One warp of one noise frame per method, through a 2°-per-frame rotation (a general flow, no shortcut), median of
# `warp_bench_repeats` runs after a warm-up, on this machine's device (CUDA synchronised). GP warping uses
# J = `warp_bench_features` features (the paper: 3000). The paper reports 39 ms per 1024x1024 frame for GP warping
# on one GPU and quotes 629 ms per frame for HIWYN; "1024x1024" may mean the image (whose SDXL latent is
# 128x128x4) or a 1024x1024 noise, so the gpu profile measures both. Batched: `warp_bench_batch` GP warps in one
# call (the paper: 1000 warps in 46 ms).

# %%
def timed(fn, repeats):
    fn()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)) * 1000


bench = []
for h, w, c in warp_bench_sizes:
    m = FL.motion("rotate", h, degrees=2.0)
    back = m.flow(1, 0, (h, w), device=dev).to(dev)
    fwd = m.flow(0, 1, (h, w), device=dev).to(dev)
    x = torch.randn(1, c, h, w, device=dev)
    pos = FL.grid(h, w, device=dev)[None] + back
    rff = NW.RFFNoise(1, c, features=warp_bench_features, truncation=warp_rff_truncation, device=dev)
    cases = {"nearest": lambda: FL.sample_at(x, pos, mode="nearest"),
             "bilinear": lambda: FL.sample_at(x, pos, mode="bilinear"),
             f"hiwyn (N={warp_hiwyn_factor})": lambda: NW.integral_warp(x, fwd, warp_hiwyn_factor),
             f"gp (J={warp_bench_features})": lambda: rff(pos)}
    for name, fn in cases.items():
        bench.append({"size": f"{h}x{w}x{c}", "method": name, "ms_per_frame": timed(fn, warp_bench_repeats),
                      "device": str(dev)})
h, w, c = warp_bench_batch_size
m = FL.motion("rotate", h, degrees=2.0)
posb = (FL.grid(h, w, device=dev)[None] + m.flow(1, 0, (h, w)).to(dev)).expand(warp_bench_batch, -1, -1, -1)
rffb = NW.RFFNoise(warp_bench_batch, c, features=warp_bench_features, truncation=warp_rff_truncation, device=dev)
batched_ms = timed(lambda: rffb(posb), warp_bench_repeats)
bench.append({"size": f"{warp_bench_batch} x {h}x{w}x{c}", "method": f"gp (J={warp_bench_features}), batched",
              "ms_per_frame": batched_ms / warp_bench_batch, "ms_total": batched_ms, "device": str(dev)})
display(Markdown("| size | method | ms/frame | device |\n|---|---|---|---|\n" + "\n".join(
    f"| {b['size']} | {b['method']} | {b['ms_per_frame']:.2f} | {b['device']} |" for b in bench)))

# %% [markdown]
# ## 4 · A conditional latent model trained on white and on GP noise
#
# The paper fine-tunes SDXL for x8 super-resolution and inpainting. Our stand-in is x4 super-resolution of 64 px
# frames in the vanilla VAE's latent space (notebook 20; factor 4, so 16x16x4 latents): the low-resolution frame
# (area average down by 4, bicubic back up) is encoded and concatenated to the noisy latent on the channel axis.
# The "indep" model is trained with white noise from scratch; the "gp" model continues from it with GP noise
# (epsilon-prediction of the GP sample; DDIM with epsilon-prediction integrates the same probability-flow ODE for any
# fixed noise covariance, so the sampler does not change). Training crops come from the photographs *not* used for
# the videos. Latents are scaled to unit standard deviation.

# %%
vae = load_alias_free(AutoencoderKL, "checkpoints/vae/vanilla").eval().to(dev)
f = VAE.factor(vae)
if S % f:
    raise ValueError(f"warp_frame_size ({S}) must be a multiple of the VAE factor {f}")
train_images = data.random_crops(warp_train_crops, S, seed=seed, images=data.natural_images(TRAIN_PHOTOS))
with torch.no_grad():
    z_train = ldm.encode_latents(vae, train_images.to(dev)).cpu()
    scale = float(1 / z_train.std())
    c_train = ldm.encode_latents(vae, VID.degrade_sr(train_images).to(dev)).cpu() * scale
z_train = z_train * scale
LAT = tuple(z_train.shape[1:])
print(f"{len(train_images)} crops -> latents {LAT}, factor {f}, scale {scale:.3f}")


@torch.no_grad()
def encode(x):
    return torch.cat([ldm.encode_latents(vae, x[i:i + 256].to(dev)) for i in range(0, len(x), 256)]).cpu() * scale


@torch.no_grad()
def decode(z):
    return torch.cat([vae.decode(z[i:i + 256].to(dev) / scale).sample for i in range(0, len(z), 256)]).clamp(-1, 1) \
        .cpu()


def train_model(kind, steps, start=None):
    fp = dict(kind=kind, channels=warp_channels, steps=steps, start=start and start[0], batch=warp_batch,
              lr=warp_lr, ema=warp_ema_decay, crops=warp_train_crops, size=S, seed=seed, scale=round(scale, 6),
              rff=(warp_rff_features, warp_rff_truncation))
    run_dir = prepare_run_dir(f"checkpoints/warp/{kind}", fp)
    seed_everything(seed)
    unet = VID.sr_unet(tuple(warp_channels), LAT[0], LAT[-1])
    if start is not None:
        unet.load_state_dict(start[1].state_dict())
    sched = ldm.make_scheduler("ddpm", schedule=VID.SCHEDULE)

    def get_batch(step):
        g = torch.Generator().manual_seed(seed * 100003 + step + (7 if kind == "gp" else 0))
        i = torch.randint(0, len(z_train), (warp_batch,), generator=g, device="cpu")
        return z_train[i], c_train[i], g.initial_seed()

    def loss_fn(model, batch, step):
        z, c, s = batch
        return VID.sr_loss(model, z, c, sched, torch.Generator().manual_seed(int(s) + 1), noise=kind,
                           rff_features=warp_rff_features, rff_truncation=warp_rff_truncation)

    unet, ema, hist = train_loop(unet, loss_fn, get_batch, steps=steps, lr=warp_lr, ckpt_dir=run_dir,
                                 ckpt_every=warp_ckpt_every, ema_decay=warp_ema_decay, device=str(dev),
                                 desc=f"{kind} model", log_csv=run_dir / "loss.csv")
    return (ema or unet).to(dev).eval(), hist


models, histories = {}, {}
models["indep"], histories["indep"] = train_model("indep", warp_train_steps)
models["gp"], histories["gp"] = train_model("gp", warp_gp_finetune_steps, start=("indep", models["indep"]))
train_seconds = {k: sum(r["seconds"] for r in h) for k, h in histories.items()}
fig, ax = plt.subplots(figsize=(6, 3))
for k, h in histories.items():
    offset = 0 if k == "indep" else warp_train_steps
    ax.plot([offset + r["step"] for r in h], [r["loss"] for r in h], label=f"{k} noise", lw=0.8)
ax.set_yscale("log")
ax.set_xlabel("step")
ax.set_ylabel("epsilon MSE")
ax.legend()
save_figure(fig, "figures/40_noise_warping/loss.png")
plt.show()
train_seconds

# %% [markdown]
# ## 5 · Tables 2 and 3 at our scale
#
# **Protocol.** Two families of `warp_videos` videos of `warp_frames` frames from held-out photographs.
# *T2* (the paper's Table 2 protocol, with x4 SR instead of inpainting): integer translation by one latent pixel
# (4 image pixels) per frame in a random compass direction. For integer shifts nearest, bilinear, integral and GP
# warping all give the same noise (up to fresh noise entering at the border), so any gain beyond them must come from
# guidance. *T3* (general motion, the paper's Table 3 uses real videos with RAFT flows; ours are synthetic with exact
# flows): a sub-pixel pan of 0.35 latent pixel per frame, a 2°-per-frame rotation, a 2 %-per-frame zoom and the
# elastic motion, in turn. Each video is super-resolved frame by frame with every noise method; the noise of frame
# $j$ is frame 0's noise warped along the composed motion $0 \to j$ (GP noise is re-evaluated at $W_j(p)$), except
# integral noise, which is transported frame by frame as in HIWYN.
#
# **Equivariance self-guidance** (rows "+ guidance"). Frame 0 is sampled plainly and its prediction of the clean
# latent $\hat x_0$ is kept at every step. For frame $j \ge 1$, at every step: the DDIM update $x_t \to x_{t-1}$; the
# residual $r = M \odot (\mathcal{W}(\hat x_0^{(j)}, F_{j-1\to j}) - \hat x_0^{(j-1)})$ compares the current
# frame's prediction, warped bilinearly onto frame $j-1$'s grid, with frame $j-1$'s stored prediction at the same
# step ($M$: in-frame pixels); then $x_{t-1} \leftarrow x_{t-1} - \lambda \nabla_{x_t} \lVert r\rVert^2 / \lVert r
# \rVert$ (the normalisation of diffusion posterior sampling, DPS). $\lambda = 1$ is the paper's choice; guided rows
# use `warp_guided_steps` DDIM steps, unguided ones `warp_steps`, as in the paper. Warping the *current* prediction
# and matching the stored, un-interpolated one keeps outputs sharp (matching an interpolated target would blur).
#
# **Metrics.** Warping error (above) of the final latents ("latent", scaled latents) and of the decoded frames
# ("pixel", images in [-1, 1]) against the first frame ($F_{0\to j}$) and against the previous frame
# ($F_{j-1\to j}$), averaged over frames 1..T-1; the table's "WE" is the paper's "Warping Err": the first-frame error,
# mean ± std over videos (standard errors in the JSON). Restoration over all frames: PSNR (peak 2), SSIM (data range
# 2) and MSE on [0, 1] images against the ground-truth frames. FID, IS, CLIP and LPIPS are not computed (no
# pretrained feature networks offline). The paper does not state the units of its warping error, so compare *ratios*
# between rows, not values.

# %%
ROWS = [  # (row, model, noise method, guidance) ; paper T2 and T3 "Warping Err" (mean, std), SSIM, MSE
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
    ("Warped Diffusion", "gp", "gp_warp", warp_guidance, (0.001, 0.001, .779, .058), (0.649, 0.363, .654, .008)),
    ("How I Warped + guidance (beyond paper)", "indep", "hiwyn", warp_guidance, None, None),
    ("No warp (resample gp) + guidance (beyond paper)", "gp", "gp_resample", warp_guidance, None, None),
    ("Warped Diffusion, stored target warped (beyond paper)", "gp", "gp_warp", warp_guidance, None, None),
]
# guidance residual: "current" = the paper's (warp the current prediction onto the previous frame's grid);
# "previous" = warp the previous frame's stored prediction onto the current grid (section 6 explains why)
TARGET = {"Warped Diffusion, stored target warped (beyond paper)": "previous"}
# extra GP-warping runs at the guided step count; lambda 0 is the unguided run at that step count (bit-identical)
SWEEP = [lam for lam in warp_guidance_sweep if lam not in (0.0, warp_guidance)]


def noises_for(method, v):
    b = len(v)
    tf = torch.stack([vid.flows("to_first", scale=f) for vid in v], 1)
    pf = torch.stack([vid.flows("prev", scale=f) for vid in v], 1)
    g = torch.Generator().manual_seed(seed * 1000 + NW.METHODS.index(method))
    return NW.noise_video(method, (b,) + LAT, tf, pf, generator=g, factor=warp_hiwyn_factor,
                          rff_features=warp_rff_features, rff_truncation=warp_rff_truncation, device="cpu")


def run_table(table):
    v = videos[table]
    b, T = len(v), warp_frames
    frames = torch.stack([vid.frames for vid in v], 1)  # (T, B, 3, S, S)
    conds = encode(VID.degrade_sr(frames.flatten(0, 1))).reshape(T, b, *LAT)
    lat_prev = torch.stack([vid.flows("prev", scale=f) for vid in v], 1)
    lat_first = torch.stack([vid.flows("first", scale=f) for vid in v], 1)
    lat_back = torch.stack([torch.cat([vid.flow(j, j - 1, scale=f) for j in range(1, T)]) for vid in v], 1)
    img_prev = torch.stack([vid.flows("prev") for vid in v], 1)
    img_first = torch.stack([vid.flows("first") for vid in v], 1)
    # jobs: (label, model, method, lambda, steps); batched per (model, guided?, steps) to use the CPU well
    jobs = [(r[0], r[1], r[2], r[3], warp_guided_steps if r[3] is not None else warp_steps) for r in ROWS]
    jobs += [(f"GP Warping + guidance lambda={lam}", "gp", "gp_warp", lam, warp_guided_steps) for lam in SWEEP]
    jobs += [("GP Warping, guided steps", "gp", "gp_warp", None, warp_guided_steps)]
    groups = {}
    for job in jobs:
        groups.setdefault((job[1], job[3] is not None, job[4], TARGET.get(job[0], "current")), []).append(job)
    latents, seconds = {}, {}
    for (model, guided, steps, target), group in groups.items():
        noise = torch.cat([noises_for(j[2], v) for j in group], 1).to(dev)
        cond = conds.repeat(1, len(group), 1, 1, 1).to(dev)
        lam = torch.cat([torch.full((b,), float(j[3] or 0.0), device=dev) for j in group]).to(dev) if guided else None
        t0 = time.perf_counter()
        out = VID.sample_video(models[model], noise, cond, steps, guidance=lam,
                               prev_flows=lat_prev.repeat(1, len(group), 1, 1, 1).to(dev) if guided else None,
                               guidance_target=target,
                               back_flows=lat_back.repeat(1, len(group), 1, 1, 1).to(dev) if guided else None,
                               progress=True).cpu()
        sec = (time.perf_counter() - t0) / (len(group) * b * T)
        for k, j in enumerate(group):
            latents[j[0]] = out[:, k * b:(k + 1) * b]
            seconds[j[0]] = sec
    results = {}
    for label, z in latents.items():
        imgs = decode(z.flatten(0, 1)).reshape(T, b, 3, S, S)
        lw, pw = VID.warp_errors(z, lat_first, lat_prev), VID.warp_errors(imgs, img_first, img_prev)
        rest = VID.restoration(imgs.flatten(0, 1), frames.flatten(0, 1))
        results[label] = {"latent_first": lw["first"], "latent_prev": lw["prev"], "pixel_first": pw["first"],
                          "pixel_prev": pw["prev"], "psnr": rest["psnr"], "ssim": rest["ssim"],
                          "mse01": rest["mse01"], "images": imgs, "latents": z, "sec_per_frame": seconds[label]}
    gt_lat = encode(frames.flatten(0, 1)).reshape(T, b, *LAT)
    floor = {"latent": VID.warp_errors(gt_lat, lat_first, lat_prev),
             "pixel": VID.warp_errors(frames, img_first, img_prev)}
    lr = decode(conds.flatten(0, 1)).reshape(T, b, 3, S, S)
    return results, floor, frames, lr


tables = {}
for table in ("T2", "T3"):
    t0 = time.perf_counter()
    tables[table] = run_table(table)
    print(f"{table}: {time.perf_counter() - t0:.0f} s")

# %%
def summarise(res):
    out = {}
    for key in ("latent_first", "latent_prev", "pixel_first", "pixel_prev"):
        per_video = res[key].mean(0).numpy()  # mean over frames 1..T-1, one value per video
        out[key] = {"mean": float(per_video.mean()), "std": float(per_video.std(ddof=1)) if len(per_video) > 1
                    else 0.0, "sem": mean_sem(per_video)[1]}
    for key in ("psnr", "ssim", "mse01"):
        m, s = mean_sem(res[key].numpy())
        out[key] = {"mean": m, "sem": s}
    out["sec_per_frame"] = res["sec_per_frame"]
    return out


def floor_summary(fl):
    return {f"{space}_{k}": {"mean": float(fl[space][k].mean(0).mean()), "sem": mean_sem(fl[space][k].mean(0))[1]}
            for space in ("latent", "pixel") for k in ("first", "prev")}


summary_tables = {}
for table, (res, floor, frames, lr) in tables.items():
    rows = []
    for r in ROWS:
        s = summarise(res[r[0]])
        paper = r[4] if table == "T2" else r[5]
        rows.append({"row": r[0], **s, "paper": None if paper is None else
                     {"warp_err": paper[0], "warp_err_std": paper[1], "ssim": paper[2], "mse": paper[3]}})
    sweep = [{"lambda": 0.0 if lam is None else lam, **summarise(res[label])} for label, lam in
             [("GP Warping, guided steps", None)] + [(f"GP Warping + guidance lambda={lam}", lam) for lam in SWEEP]
             + [("Warped Diffusion", warp_guidance)]]
    summary_tables[table] = {"rows": rows, "floor": floor_summary(floor), "lambda_sweep": sorted(
        sweep, key=lambda s: s["lambda"])}


def fmt(d, k=3):
    return f"{d['mean']:.{k}f} ± {d['std' if 'std' in d else 'sem']:.{k}f}"


for table in ("T2", "T3"):
    st = summary_tables[table]
    lines = ["| row | WE latent (first) | WE pixel (first) | WE latent (prev) | WE pixel (prev) | PSNR | SSIM | MSE[0,1] |"
             " paper: warp err / SSIM / MSE |", "|---|---|---|---|---|---|---|---|---|"]
    for r in st["rows"]:
        p = r["paper"]
        ptxt = "–" if p is None else f"{p['warp_err']:.3f}±{p['warp_err_std']:.3f} / {p['ssim']:.3f} / {p['mse']:.3f}"
        lines.append(f"| {r['row']} | {fmt(r['latent_first'])} | {fmt(r['pixel_first'], 4)} | "
                     f"{fmt(r['latent_prev'])} | {fmt(r['pixel_prev'], 4)} | {r['psnr']['mean']:.2f} | "
                     f"{r['ssim']['mean']:.3f} | {r['mse01']['mean']:.4f} | {ptxt} |")
    fl = st["floor"]
    lines.append(f"| ground truth (floor) | {fl['latent_first']['mean']:.3f} | {fl['pixel_first']['mean']:.4f} | "
                 f"{fl['latent_prev']['mean']:.3f} | {fl['pixel_prev']['mean']:.4f} | – | – | – | – |")
    display(Markdown(f"**{table}** ({'integer translation' if table == 'T2' else 'general motion'}; "
                     f"{warp_videos} videos x {warp_frames} frames; WE: mean over frames, mean ± std over videos)\n\n"
                     + "\n".join(lines)))

# %%
we_rows = []
fig, axes = plt.subplots(2, 4, figsize=(17, 7), sharex=True)
plot_rows = ["Fixed (indep)", "Resample (indep)", "Bilinear (indep)", "How I Warped (indep)", "GP Warping",
             "Warped Diffusion"]
for ti, table in enumerate(("T2", "T3")):
    res, floor = tables[table][0], tables[table][1]
    for ki, key in enumerate(("latent_first", "pixel_first", "latent_prev", "pixel_prev")):
        ax = axes[ti, ki]
        frames_idx = np.arange(1, warp_frames)
        for label in plot_rows:
            ax.plot(frames_idx, res[label][key].mean(1).numpy(), marker="o", ms=3, label=label)
        space, kind = key.split("_")
        ax.plot(frames_idx, floor[space][kind].mean(1).numpy(), "k--", label="ground truth (floor)")
        ax.set_yscale("log")
        ax.set_title(f"{table}: {space} WE vs {kind} frame", fontsize=9)
        if ti == 1:
            ax.set_xlabel("frame")
    for label in [r[0] for r in ROWS]:
        for j in range(1, warp_frames):
            we_rows.append({"table": table, "method": label, "frame": j,
                            **{k: float(res[label][k][j - 1].mean()) for k in
                               ("latent_first", "pixel_first", "latent_prev", "pixel_prev")}})
axes[0, 0].legend(fontsize=7)
fig.tight_layout()
save_figure(fig, "figures/40_noise_warping/warping_error_per_frame.png")
save_csv(we_rows, "metrics/40_noise_warping_we.csv")
plt.show()

# %% [markdown]
# **λ sweep.** The same GP-warped noise sampled with `warp_guided_steps` steps and guidance strength λ
# (λ = 0 is GP warping at the guided step count, bit-identical to unguided sampling, a property the tests check).
# Strong guidance trades restoration quality for consistency; the paper found λ = 1 best.

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
for table, mk in (("T2", "o-"), ("T3", "s-")):
    sw = summary_tables[table]["lambda_sweep"]
    lams = [max(s["lambda"], 1e-2) for s in sw]
    axes[0].plot(lams, [s["latent_first"]["mean"] for s in sw], mk, label=f"{table} latent WE (first)")
    axes[0].plot(lams, [s["pixel_first"]["mean"] for s in sw], mk, alpha=0.5, label=f"{table} pixel WE (first)")
    axes[1].plot(lams, [s["psnr"]["mean"] for s in sw], mk, label=table)
for ax in axes:
    ax.set_xscale("log")
    ax.set_xlabel("lambda (0 drawn at 0.01)")
axes[0].set_yscale("log")
axes[0].legend(fontsize=7)
axes[1].set_ylabel("PSNR (dB)")
axes[1].legend()
fig.tight_layout()
save_figure(fig, "figures/40_noise_warping/lambda_sweep.png")
plt.show()

# %%
res, floor, frames, lr = tables["T3"]
vid = 1 % warp_videos  # the rotation video
cols = [("ground truth", frames), ("input (x4 down)", lr), ("Resample (indep)", res["Resample (indep)"]["images"]),
        ("GP Warping", res["GP Warping"]["images"]), ("Warped Diffusion", res["Warped Diffusion"]["images"])]
gif = []
for j in range(warp_frames):
    row = np.concatenate([np.pad(to01(c[1][j, vid]), ((2, 2), (2, 2), (0, 0)), constant_values=1) for c in cols], 1)
    gif.append(np.kron(row, np.ones((2, 2, 1))))
save_gif(gif, "figures/40_noise_warping/side_by_side.gif", fps=4)
fig, ax = plt.subplots(figsize=(12, 3))
ax.imshow(np.concatenate(gif[:1] + gif[-1:], 0))
ax.set_title(" | ".join(c[0] for c in cols) + "  (frame 0 top, last frame bottom)", fontsize=9)
ax.axis("off")
save_figure(fig, "figures/40_noise_warping/side_by_side.png")
plt.show()

# %% [markdown]
# ## 6 · Why self-guidance fails under sub-pixel motion here
#
# On T2 guidance removes nearly all the warping error; on T3 the paper's guided row is *worse* than GP warping alone.
# The cause is the warp inside the residual. A bilinear warp by a fractional offset $\delta$ mixes two neighbours,
# $(1-\delta)\,y(p) + \delta\,y(p+1)$, whose frequency response at Nyquist is $|1 - 2\delta|$: for the T3 pan's
# 0.35 latent pixel per frame that is 0.3. The residual $\mathcal{W}(\hat x_0^{(j)}) - \hat x_0^{(j-1)}$ can then
# only vanish if frame $j$'s prediction carries its high frequencies *boosted* (by up to 1/0.3 at Nyquist), and frame
# $j+1$ is pulled towards that boosted frame, so the boost compounds along the chain until the frames are mostly
# high-frequency energy. On integer pans $\delta = 0$, the warp is exact and nothing compounds. Rotation, zoom and
# the elastic motion have smaller or varying fractional offsets, hence smaller effects.
#
# The test: the share of latent energy above half Nyquist, frame by frame, for the unguided GP-warped run, the
# paper's guidance and a variant (row "stored target warped", `guidance_target="previous"` in `afcore.video`) that
# warps frame $j-1$'s stored prediction onto frame $j$'s grid instead, $r = M \odot (\hat x_0^{(j)} -
# \mathcal{W}(\hat x_0^{(j-1)}, F_{j\to j-1}))$: it never asks for a boost, and pays with the opposite drift (each
# frame a little smoother than the last).

# %%
def high_share(z):
    """Share of the energy above half Nyquist (either axis), per latent: (..., C, h, w) -> (...)."""
    e = torch.fft.fft2(z.double()).abs() ** 2
    fy, fx = torch.fft.fftfreq(z.shape[-2]).abs(), torch.fft.fftfreq(z.shape[-1]).abs()
    hi = ((fy[:, None] > 0.25) | (fx[None, :] > 0.25)).double()
    return ((e * hi).sum((-1, -2, -3)) / e.sum((-1, -2, -3))).float()


res3 = tables["T3"][0]
diag_rows = [("GP Warping, guided steps", "GP warping, no guidance"), ("Warped Diffusion", "paper's guidance"),
             ("Warped Diffusion, stored target warped (beyond paper)", "stored target warped")]
shares = {label: high_share(res3[key]["latents"]) for key, label in diag_rows}  # (T, B)
fig, axes = plt.subplots(1, min(4, warp_videos), figsize=(4 * min(4, warp_videos), 3.2), squeeze=False)
for vi, ax in enumerate(axes[0]):
    for _, label in diag_rows:
        ax.plot(range(warp_frames), shares[label][:, vi].numpy(), "o-", ms=3, label=label)
    ax.set_title(f"T3 {T3_KINDS[vi % len(T3_KINDS)][0]}", fontsize=9)
    ax.set_xlabel("frame")
axes[0, 0].set_ylabel("latent energy above half Nyquist")
axes[0, 0].legend(fontsize=7)
fig.tight_layout()
save_figure(fig, "figures/40_noise_warping/guidance_high_frequencies.png")
plt.show()
pan_delta = T3_KINDS[0][1]["speed"] / f % 1
guidance_diagnosis = {
    "bilinear_nyquist_gain_of_the_pan_step": abs(1 - 2 * pan_delta), "pan_step_latent_px": pan_delta,
    "high_share_first_frame": {label: float(shares[label][0].mean()) for _, label in diag_rows},
    "high_share_last_frame": {label: float(shares[label][-1].mean()) for _, label in diag_rows},
    "high_share_last_frame_per_video": {label: shares[label][-1].tolist() for _, label in diag_rows},
    "videos": [T3_KINDS[i % len(T3_KINDS)][0] for i in range(warp_videos)],
}
if profile != "smoke":  # the mechanism the text states, on the trained model (the smoke model is untrained)
    pan = [i for i in range(warp_videos) if T3_KINDS[i % len(T3_KINDS)][0] == "pan"]
    grown = shares["paper's guidance"][-1, pan] / shares["paper's guidance"][0, pan]
    assert bool((grown > 1.5).all()), f"the paper's guidance did not boost high frequencies on the pan: {grown}"
    assert bool((shares["stored target warped"][-1, pan] < shares["paper's guidance"][-1, pan]).all())
guidance_diagnosis

# %%
def ratio(table, a, b, key="latent_first"):
    rows = {r["row"]: r for r in summary_tables[table]["rows"]}
    return rows[a][key]["mean"] / rows[b][key]["mean"]


rows1 = {r["row"]: r for r in summary_tables["T3"]["rows"]}
table1 = {k: {m: {"mean": rows1[k][m]["mean"], "sem": rows1[k][m]["sem"]} for m in ("psnr", "ssim", "mse01")}
          for k in ("Resample (indep)", "Resample (gp)")}
ratios = {t: {"wd_over_gp_warping_latent": ratio(t, "Warped Diffusion", "GP Warping"),
              "wd_over_gp_warping_pixel": ratio(t, "Warped Diffusion", "GP Warping", "pixel_first"),
              "paper_wd_over_gp_warping": 0.001 / 0.061 if t == "T2" else 0.649 / 0.812}
          for t in ("T2", "T3")}
summary = {
    "profile": profile,
    "scale": {"frame_size": S, "latent_shape": list(LAT), "vae": "vanilla (notebook 20), factor 4",
              "unet": warp_channels, "train_steps": {"indep": warp_train_steps, "gp": warp_gp_finetune_steps},
              "batch": warp_batch, "rff_features": warp_rff_features, "frames": warp_frames,
              "videos_per_table": warp_videos, "ddim_steps": warp_steps, "guided_steps": warp_guided_steps,
              "guidance": warp_guidance},
    "conventions": "WE = sum M |y_later(p + F(p)) - y_ref(p)|^2 / (C sum M), bilinear warp of the later frame, "
                   "M = in-frame; latent = scaled latents, pixel = images in [-1, 1]; table WE = mean over frames "
                   "1..T-1 of the first-frame error, mean ± std over videos; PSNR peak 2, SSIM data range 2, MSE on "
                   "[0, 1]; T2 = integer latent-pixel pans (x4 SR, the paper's Table 2 is inpainting), T3 = synthetic "
                   "sub-pixel pan/rotation/zoom/elastic with exact flows (the paper: real videos, RAFT flows)",
    "stereo_check": stereo,
    "noise_statistics": stat_rows,
    "cost": bench,
    "cost_paper": {"gp_ms_per_1024_frame_gpu": 39, "hiwyn_ms_per_frame_quoted": 629, "gp_1000_warps_ms": 46},
    "train_seconds": train_seconds,
    "tables": summary_tables,
    "table1_single_frame_T3": table1,
    "table1_paper_sr": {"gp": {"ssim": .770, "mse": .004}, "indep": {"ssim": .785, "mse": .004}},
    "ratios": ratios,
    "guidance_diagnosis": guidance_diagnosis,
}
save_json(summary, "metrics/40_noise_warping.json")
ratios

# %% [markdown]
# ## Reading the results
#
# The noise statistics are exact properties and come out as the theory says at any scale: integral noise and GP
# warping preserve their distributions through a rotation, bilinear interpolation does not. The video tables are a
# small-scale experiment: read the ratios between rows and compare them with the paper's ratios
# (Warped Diffusion / GP warping: 0.016 on Table 2, 0.80 on Table 3), with the floor in mind, below which no method
# can go with a bilinear warping error. The README records the committed cpu-profile numbers and what they show.
