"""AF-VAE: a small diffusers AutoencoderKL, its training loss with the AF-LDM equivariance terms, and its SPSNRs.

Taught by notebook 20_af_vae; the equations are written out in docs/af-ldm.md. The encoder rescales by s = 1/f, the
decoder by f, where f is the VAE's down-sampling factor (8 for SD's VAE, 4 for our small cpu one).

Defaults follow the AF-LDM reference trainer (its VAE trainer; differences are options, each with its reason):
- the latent z fed to the decoder is a posterior *sample* (``posterior="sample"``; ``"mean"`` uses the means);
- the KL is summed over the latent and divided by the batch size (``kl_norm="batch"``; ``"pixel"`` also divides by
  the image's element count, which makes its effective weight H*W*3 times smaller);
- encoder equivariance term: E(T_d x) vs T_{d/f} sg(z), with one integer image shift d per batch drawn from
  U{-0.375 H .. 0.375 H} per axis, the latent target shifted by d/f with a cropped Fourier shift (the "ideal crop");
- decoder equivariance term: D(T_{d/f} sg(z)) vs T_d sg(D(z)): the shifted latent is detached, so this term trains
  the decoder only, and the encoder term trains the encoder only.
Both are means over the valid (cropped) masks; sg = stop-gradient.

Training pieces of the reference loss (mse + enc + dec + LPIPS + 1e-6 KL + adaptive hinge GAN):
- ``PerceptualFeatures`` / ``perceptual_distance``: an offline LPIPS stand-in (frozen, seeded random conv features,
  LPIPS's channel-unit normalisation, no learned channel weights); a real LPIPS-like net plugs in via ``weights_path``.
- ``PatchDiscriminator`` (optionally alias-free), ``hinge_d_loss`` / ``hinge_g_loss``, and ``VAEWithDiscriminator``
  which lets the single-optimizer ``afcore.train.train_loop`` train VAE and discriminator together.
- ``load_pretrained_vae``: a local directory or a hub id, offline-aware, with clear errors.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from afcore import layers, metrics, signal


def small_vae(channels=(32, 64, 64), latent_channels: int = 4, groups: int = 8, layers_per_block: int = 1):
    """A small AutoencoderKL: len(channels) levels, down-sampling factor 2**(len(channels) - 1)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * len(channels),
                         up_block_types=("UpDecoderBlock2D",) * len(channels), block_out_channels=tuple(channels),
                         layers_per_block=layers_per_block, latent_channels=latent_channels, norm_num_groups=groups)


def factor(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def encode(vae, x):
    return vae.encode(x).latent_dist.mean


def decode(vae, z):
    return vae.decode(z).sample


def random_image_shift(size: int, generator: torch.Generator | None, max_fraction: float = 0.375) -> tuple[int, int]:
    """(dy, dx) integers uniform in [-max_fraction * size, max_fraction * size], drawn on the generator's device."""
    limit = int(max_fraction * size)
    device = generator.device if generator is not None else None
    dy, dx = torch.randint(-limit, limit + 1, (2,), generator=generator, device=device).tolist()
    return dy, dx


POSTERIORS = ("sample", "mean")
KL_NORMS = ("batch", "pixel")


def _check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def latent_of(posterior, mode: str = "sample", generator: torch.Generator | None = None) -> torch.Tensor:
    """The latent the decoder sees: a posterior sample mean + std * eps (eps from ``generator``, drawn on the
    posterior's device) or the posterior mean."""
    _check_choice("posterior", mode, POSTERIORS)
    if mode == "mean":
        return posterior.mean
    eps = torch.randn(posterior.mean.shape, generator=generator, device=posterior.mean.device,
                      dtype=posterior.mean.dtype)
    return posterior.mean + posterior.std * eps


def _masked_mse(pred, target, mask):
    m = mask.expand_as(pred)
    return ((pred - target) ** 2 * m).sum() / m.sum().clamp(min=1)


def equivariance_losses(vae, x, z, d, recon=None, posterior: str = "mean", generator=None):
    """(encoder term, decoder term) for an integer image shift d, the batch x and its latent z (sample or mean).

    Encoder term: masked MSE of E(T_d x) against T_{d/f} sg(z); E(T_d x) is a posterior sample when
    ``posterior="sample"`` (as the reference compares a sample with the shifted sample) or the mean.
    Decoder term: masked MSE of D(T_{d/f} sg(z)) against T_d sg(recon), ``recon`` = D(z) (computed without gradient
    when not given). Gradients: the encoder term reaches only the encoder's parameters (through E(T_d x)), the decoder
    term only the decoder's (through D(T_{d/f} sg(z))); neither reaches z.
    """
    f = factor(vae)
    dl = (d[0] / f, d[1] / f)
    z = z.detach()
    shifted_x, _ = signal.shift(x, d, mode="crop")
    target_z, mask_z = signal.shift(z, dl, mode="crop")
    mask_z = mask_z * signal.valid_mask(z.shape[-2:], dl, z.device)
    shifted_latent = latent_of(vae.encode(shifted_x).latent_dist, posterior, generator)
    enc = _masked_mse(shifted_latent * mask_z, target_z, mask_z)
    with torch.no_grad():
        shifted_z, _ = signal.shift(z, dl, mode="crop")
        target_x, mask_x = signal.shift(decode(vae, z) if recon is None else recon.detach(), d, mode="crop")
    dec = _masked_mse(decode(vae, shifted_z) * mask_x, target_x, mask_x)
    return enc, dec


def _unwrap(model):
    # accelerate may hand the loss a DistributedDataParallel wrapper; the loss needs the module's attributes
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def adaptive_weight(nll: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
    """VQGAN's balance ||grad_last nll|| / (||grad_last g|| + 1e-4), clamped to [0, 1e4], detached.

    It scales the generator's GAN term so its gradient at the decoder's last layer is as large as the
    reconstruction gradient there, whatever the two losses' raw scales are.
    """
    nll_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (nll_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, 1e4).detach()


def vae_loss(model, x, generator, kl_weight: float = 1e-6, eq_weight: float = 0.0, perceptual_weight: float = 0.0,
             perceptual=None, gan_weight: float = 0.0, gan_start: int = 0, step: int = 0,
             adaptive_gan_weight: bool = True, posterior: str = "sample", kl_norm: str = "batch"):
    """Reconstruction MSE + kl_weight KL + eq_weight (encoder + decoder equivariance terms)
    + perceptual_weight perceptual distance + hinge GAN (generator term with the adaptive weight, discriminator term).

    ``model`` is an AutoencoderKL or a ``VAEWithDiscriminator`` (needed when ``gan_weight > 0``). ``generator`` (on
    x's device) draws, in this order, the posterior noise of the reconstruction pass, the image shift, and the
    posterior noise of the shifted encoder pass. ``posterior``: "sample" (the reference) decodes a posterior sample,
    "mean" the posterior mean (deterministic; what a pure autoencoder would do). ``kl_norm``: "batch" (the
    reference) = KL summed over the latent, averaged over the batch; "pixel" divides that by the image's element
    count as well. The GAN terms are active from ``step >= gan_start``. Without gradients (evaluation) the adaptive
    weight cannot be computed and ``gan_weight`` is used as it is. Returns ``(loss, logs)``; logs hold "mse", "kl"
    (+ "eq_enc", "eq_dec", "perc", "g", "d", "gan_w" for the active terms).
    """
    model = _unwrap(model)
    wrapped = model if isinstance(model, VAEWithDiscriminator) else None
    vae = wrapped.vae if wrapped is not None else model
    for name, value in (("kl_weight", kl_weight), ("eq_weight", eq_weight), ("perceptual_weight", perceptual_weight),
                        ("gan_weight", gan_weight)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    _check_choice("posterior", posterior, POSTERIORS)
    _check_choice("kl_norm", kl_norm, KL_NORMS)
    if perceptual_weight > 0 and not isinstance(perceptual, PerceptualFeatures):
        raise ValueError(f"perceptual must be a PerceptualFeatures when perceptual_weight > 0, got {perceptual!r}")
    if gan_weight > 0 and (wrapped is None or wrapped.disc is None):
        raise ValueError("gan_weight > 0 needs a discriminator: pass model=VAEWithDiscriminator(vae, "
                         "PatchDiscriminator(...)), or set gan_weight=0")
    dist = vae.encode(x).latent_dist
    z = latent_of(dist, posterior, generator)
    recon = decode(vae, z)
    mse = torch.mean((recon - x) ** 2)
    kl = dist.kl().sum() / x.shape[0]
    if kl_norm == "pixel":
        kl = kl / x[0].numel()
    logs = {"mse": mse.item(), "kl": kl.item()}
    nll = mse  # the reconstruction part the adaptive GAN weight balances against (VQGAN: rec + perceptual)
    if perceptual_weight > 0:
        perc = perceptual_distance(perceptual.to(x.device), recon, x).mean()
        nll = nll + perceptual_weight * perc
        logs["perc"] = perc.item()
    loss = nll + kl_weight * kl
    if eq_weight > 0:
        d = random_image_shift(x.shape[-1], generator)
        enc, dec = equivariance_losses(vae, x, z, d, recon=recon, posterior=posterior, generator=generator)
        loss = loss + eq_weight * (enc + dec)
        logs.update(eq_enc=enc.item(), eq_dec=dec.item())
    if gan_weight > 0 and step >= gan_start:
        g = wrapped.generator_loss(recon)
        weight = torch.tensor(float(gan_weight), device=x.device)
        if adaptive_gan_weight and torch.is_grad_enabled() and g.requires_grad and nll.requires_grad:
            weight = gan_weight * adaptive_weight(nll, g, vae.decoder.conv_out.weight)
        d_loss = wrapped.discriminator_loss(x, recon)
        loss = loss + weight * g + d_loss
        logs.update(g=g.item(), d=d_loss.item(), gan_w=float(weight))
    return loss, logs


@torch.no_grad()
def enc_dec_spsnr(vae, x, shift_px: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample Enc SPSNR and Dec SPSNR (dB, tensors of shape (B,)) for one image shift d = ``shift_px``.

    Enc: image shift d, latent shift d/f, posterior means, peak = each target latent's dynamic range (max - min
    inside the valid mask, ``peak="range"``). Dec: latent shift d/f, image shift d, peak 2 (images in [-1, 1]).
    Both cropped (zero fill, valid mask). Average them in dB over samples and shifts.
    """
    f = factor(vae)
    z = encode(vae, x)
    enc = metrics.spsnr(lambda t: encode(vae, t), x, shift_px, scale=1.0 / f, peak="range", fx=z, per_sample=True)
    dec = metrics.spsnr(lambda t: decode(vae, t), z, (shift_px[0] / f, shift_px[1] / f), scale=float(f),
                        peak=2.0, per_sample=True)
    return enc, dec


# --- perceptual distance (offline LPIPS stand-in) -----------------------------------------------------------------

class PerceptualFeatures(nn.Module):
    """Frozen multi-layer conv features for an LPIPS-like distance, with no downloadable weights needed.

    Three 3x3 conv stages (3->32 stride 1, 32->64 stride 2, 64->64 stride 2), each followed by LeakyReLU 0.2, with
    weights drawn from ``torch.Generator().manual_seed(seed)`` (He-normal), so every run builds the same net.
    Random conv features already measure multi-scale local structure; what they lack against LPIPS are the
    ImageNet-trained filters and the learned per-channel weights. ``weights_path`` loads a state dict of this
    architecture (e.g. a distilled LPIPS-like net) instead. The module never trains: parameters have
    ``requires_grad=False`` and it stays in eval mode; gradients still flow to its inputs.
    """

    def __init__(self, channels=(32, 64, 64), seed: int = 0, weights_path: str | None = None):
        super().__init__()
        strides = [1] + [2] * (len(channels) - 1)
        convs, c_in = [], 3
        gen = torch.Generator(device="cpu").manual_seed(seed)  # built on the CPU, moved with the module
        for c, s in zip(channels, strides):
            conv = nn.Conv2d(c_in, c, 3, stride=s, padding=1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen, device="cpu")
                                  * math.sqrt(2.0 / (c_in * 9)))
                conv.bias.zero_()
            convs.append(conv)
            c_in = c
        self.convs = nn.ModuleList(convs)
        if weights_path:
            if not Path(weights_path).exists():
                raise FileNotFoundError(f"weights_path: {weights_path!r} does not exist (a state dict of "
                                        f"PerceptualFeatures(channels={tuple(channels)}))")
            self.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)  # frozen: a parent's .train() must not switch it

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.2)
            feats.append(x)
        return feats


def _unit_normalize(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    # LPIPS: each spatial feature vector divided by its norm over channels (scale-free comparison per position)
    return f / (f.pow(2).sum(1, keepdim=True).sqrt() + eps)


def perceptual_distance(feats: PerceptualFeatures, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample (B,) distance: sum over layers of the spatial mean of the squared difference of unit-normalised
    features, summed over channels (LPIPS with unit channel weights). Images in [-1, 1]."""
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    total = a.new_zeros(a.shape[0])
    for fa, fb in zip(feats(a), feats(b)):
        total = total + (_unit_normalize(fa) - _unit_normalize(fb)).pow(2).sum(1).mean((1, 2))
    return total


# --- patch discriminator and hinge GAN ----------------------------------------------------------------------------

class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator: a map of real/fake logits, one per receptive-field patch.

    Levels ``channels`` (3x3 convs): every level but the last down-samples by 2, so the logit map is
    ``2**(len(channels)-1)`` (``self.factor``) times smaller than the image; GroupNorm after every conv but the
    first, LeakyReLU 0.2, and a final 3x3 conv to 1 channel. ``alias_free=True`` keeps the same parameters but
    runs each stride-2 conv at stride 1 followed by ``layers.AliasFreeDownsample`` (ideal) and evaluates the
    LeakyReLUs as ``layers.FilteredActivation`` (x2 up, act, low-pass, down): the discriminator then judges a
    shifted image like the unshifted one, as the AF-LDM reference does with its alias-free GAN discriminator.
    """

    def __init__(self, channels=(32, 64, 128), alias_free: bool = False, in_channels: int = 3):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if not channels or min(channels) < 1:
            raise ValueError(f"channels must be a non-empty sequence of positive ints, got {channels}")
        self.alias_free, self.factor = bool(alias_free), 2 ** (len(channels) - 1)
        self.convs, self.norms = nn.ModuleList(), nn.ModuleList()
        self.downs, self.acts = nn.ModuleList(), nn.ModuleList()
        c_in = in_channels
        for i, c in enumerate(channels):
            stride = 2 if i < len(channels) - 1 else 1
            self.convs.append(nn.Conv2d(c_in, c, 3, stride=1 if alias_free else stride, padding=1))
            self.norms.append(nn.Identity() if i == 0 else nn.GroupNorm(math.gcd(c, 8), c))
            if alias_free and stride == 2:
                self.downs.append(layers.AliasFreeDownsample(2, "ideal"))
            else:
                self.downs.append(nn.Identity())
            act = nn.LeakyReLU(0.2)
            self.acts.append(layers.FilteredActivation(act, up=2, method="ideal") if alias_free else act)
            c_in = c
        self.conv_out = nn.Conv2d(c_in, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, down, norm, act in zip(self.convs, self.downs, self.norms, self.acts):
            x = act(norm(down(conv(x))))
        return self.conv_out(x)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: mean relu(1 - D(real)) + mean relu(1 + D(fake)) (VQGAN: times 1/2; we keep the
    plain sum, so real=fake=0 gives 2)."""
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator hinge loss: -mean D(G(x))."""
    return -fake_logits.mean()


class VAEWithDiscriminator(nn.Module):
    """A VAE and its discriminator as one module, so one optimizer (``afcore.train.train_loop``) trains both.

    The two players' gradients are kept apart inside the loss: ``generator_loss`` runs the discriminator with its
    parameters temporarily frozen (so -D(G(x)) only trains the VAE) and ``discriminator_loss`` sees the
    reconstruction detached (so the hinge only trains D); one backward of their sum is then the right update.
    """

    def __init__(self, vae: nn.Module, disc: nn.Module | None = None):
        super().__init__()
        self.vae, self.disc = vae, disc

    def forward(self, x):
        return self.vae(x)

    def generator_loss(self, recon: torch.Tensor) -> torch.Tensor:
        if self.disc is None:
            raise ValueError("VAEWithDiscriminator.generator_loss: disc is None")
        flags = [p.requires_grad for p in self.disc.parameters()]
        self.disc.requires_grad_(False)
        try:
            return hinge_g_loss(self.disc(recon))
        finally:
            for p, flag in zip(self.disc.parameters(), flags):
                p.requires_grad_(flag)

    def discriminator_loss(self, real: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        if self.disc is None:
            raise ValueError("VAEWithDiscriminator.discriminator_loss: disc is None")
        return hinge_d_loss(self.disc(real.detach()), self.disc(recon.detach()))


# --- pretrained weights -------------------------------------------------------------------------------------------

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w./-]+)?$")


def load_pretrained_vae(source: str, local_files_only: bool | None = None):
    """An AutoencoderKL from ``source`` (the ``vae_pretrained`` parameter), in eval mode.

    - a local directory: ``afcore.surgery.load_alias_free`` when it holds ``alias_free.json`` (the patch is
      re-applied), else ``AutoencoderKL.from_pretrained``; a pipeline directory with a ``vae/`` sub-folder works too;
    - a hub id ``"org/name"`` or ``"org/name:subfolder"`` (e.g. ``"stabilityai/sd-vae-ft-mse"``,
      ``"runwayml/stable-diffusion-v1-5:vae"``), read from the local Hugging Face cache when ``local_files_only``
      (default: true when the environment sets HF_HUB_OFFLINE) and a ``RuntimeError`` saying how to make it
      available when it is not there.
    """
    from diffusers import AutoencoderKL

    from afcore import surgery

    if not isinstance(source, str) or not source.strip():
        raise ValueError(f"vae_pretrained must be a local directory or a hub id 'org/name[:subfolder]', got {source!r}")
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists() and (path / "vae" / "config.json").exists():
            path = path / "vae"
        if (path / surgery.PATCH_FILE).exists():
            return surgery.load_alias_free(AutoencoderKL, path).eval()
        return AutoencoderKL.from_pretrained(path).eval()
    local_looking = source.startswith((".", "/", "~")) or "\\" in source or (path.parent != Path(".")
                                                                            and path.parent.is_dir())
    if local_looking or not _HUB_ID.match(source):
        raise FileNotFoundError(f"vae_pretrained={source!r}: no such local directory (a hub id has the form "
                                f"'org/name' or 'org/name:subfolder', and its 'org' is not a local folder)")
    repo, _, subfolder = source.partition(":")
    if local_files_only is None:
        local_files_only = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    try:
        model = AutoencoderKL.from_pretrained(repo, subfolder=subfolder or None, local_files_only=local_files_only)
    except Exception as exc:  # not cached, offline, unreachable hub, gated repo ...
        where = "not in the local Hugging Face cache" if local_files_only else "could not be downloaded"
        raise RuntimeError(
            f"vae_pretrained={source!r}: the weights of hub id {repo!r}"
            f"{f' (subfolder {subfolder!r})' if subfolder else ''} are {where} ({type(exc).__name__}: {exc}). "
            f"Download them once on a machine with network (e.g. `AutoencoderKL.from_pretrained({repo!r}"
            f"{f', subfolder={subfolder!r}' if subfolder else ''})` or `huggingface-cli download {repo}`) into the "
            f"cache, or save them with save_pretrained and point vae_pretrained at that local directory; "
            f"vae_pretrained='' trains a small VAE here instead.") from exc
    return model.eval()
