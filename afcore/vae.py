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

The reference loss is mse + enc + dec + LPIPS + 1e-6 KL + adaptive hinge GAN. This module holds the VAE itself and
the terms every AF-VAE needs (``vae_loss``: MSE, KL, equivariance), the SPSNRs and ``load_pretrained_vae`` (a local
directory or a hub id, offline-aware, with clear errors). The perceptual and GAN add-ons (``PerceptualFeatures``,
``PatchDiscriminator``, hinge losses, ``VAEWithDiscriminator``, the adaptive weight and ``vae_gan_loss``, the full
reference loss) live in ``afcore.vae_gan``, which plugs them into ``vae_loss`` through its ``extra`` argument; this
module imports nothing from there.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import nn

from afcore import metrics, signal


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


def unwrap(model):
    """The module inside a DistributedDataParallel wrapper (accelerate may hand the loss one), else ``model``."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def check_loss_args(posterior: str = "sample", kl_norm: str = "batch", **weights) -> None:
    """ValueError for a negative loss weight (checked in the order given) or an unknown ``posterior`` / ``kl_norm``."""
    for name, value in weights.items():
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    _check_choice("posterior", posterior, POSTERIORS)
    _check_choice("kl_norm", kl_norm, KL_NORMS)


def vae_loss(model, x, generator, kl_weight: float = 1e-6, eq_weight: float = 0.0, posterior: str = "sample",
             kl_norm: str = "batch", step: int = 0, extra=None):
    """Reconstruction MSE + kl_weight KL + eq_weight (encoder + decoder equivariance terms) [+ ``extra`` terms].

    ``model`` is an AutoencoderKL. ``generator`` (on x's device) draws, in this order, the posterior noise of the
    reconstruction pass, the image shift, and the posterior noise of the shifted encoder pass. ``posterior``:
    "sample" (the reference) decodes a posterior sample, "mean" the posterior mean (deterministic; what a pure
    autoencoder would do). ``kl_norm``: "batch" (the reference) = KL summed over the latent, averaged over the
    batch; "pixel" divides that by the image's element count as well. Returns ``(loss, logs)``; logs hold "mse",
    "kl" (+ "eq_enc", "eq_dec" when ``eq_weight > 0``).

    ``extra`` (``afcore.vae_gan.PerceptualGANTerms``, the perceptual and GAN terms; ``afcore.vae_gan.vae_gan_loss``
    builds it) adds further terms at two points: ``extra.add_reconstruction(nll, recon, x, logs) -> nll`` extends
    the reconstruction part (nll = MSE) before the KL is added, and ``extra.add_adversarial(loss, nll, vae, x, recon,
    step, logs) -> loss`` extends the total after the equivariance terms. Neither may draw from ``generator``.
    """
    vae = unwrap(model)
    check_loss_args(posterior, kl_norm, kl_weight=kl_weight, eq_weight=eq_weight)
    dist = vae.encode(x).latent_dist
    z = latent_of(dist, posterior, generator)
    recon = decode(vae, z)
    mse = torch.mean((recon - x) ** 2)
    kl = dist.kl().sum() / x.shape[0]
    if kl_norm == "pixel":
        kl = kl / x[0].numel()
    logs = {"mse": mse.item(), "kl": kl.item()}
    nll = mse  # the reconstruction part (an adaptive GAN weight balances against it)
    if extra is not None:
        nll = extra.add_reconstruction(nll, recon, x, logs)
    loss = nll + kl_weight * kl
    if eq_weight > 0:
        d = random_image_shift(x.shape[-1], generator)
        enc, dec = equivariance_losses(vae, x, z, d, recon=recon, posterior=posterior, generator=generator)
        loss = loss + eq_weight * (enc + dec)
        logs.update(eq_enc=enc.item(), eq_dec=dec.item())
    if extra is not None:
        loss = extra.add_adversarial(loss, nll, vae, x, recon, step, logs)
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
        where = "are not in the local Hugging Face cache" if local_files_only else "could not be downloaded"
        raise RuntimeError(
            f"vae_pretrained={source!r}: the weights of hub id {repo!r}"
            f"{f' (subfolder {subfolder!r})' if subfolder else ''} {where} ({type(exc).__name__}: {exc}). "
            f"Download them once on a machine with network (e.g. `AutoencoderKL.from_pretrained({repo!r}"
            f"{f', subfolder={subfolder!r}' if subfolder else ''})` or `huggingface-cli download {repo}`) into the "
            f"cache, or save them with save_pretrained and point vae_pretrained at that local directory; "
            f"vae_pretrained='' trains a small VAE here instead.") from exc
    return model.eval()
