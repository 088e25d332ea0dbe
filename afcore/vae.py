"""AF-VAE: a small diffusers AutoencoderKL, its training loss with the AF-LDM equivariance terms, and its SPSNRs.

Taught by notebook 20_af_vae. Notation (REFERENCE.md): the encoder rescales by s = 1/f, the decoder by f, where f
is the VAE's down-sampling factor (8 for SD's VAE, 4 for our small cpu one).

- Encoder equivariance term: E(T_d x) vs T_{d/f} sg(E(x)), with one integer image shift d per batch drawn from
  U{-0.375 H .. 0.375 H} per axis, the latent target shifted by d/f with a cropped Fourier shift (the "ideal crop").
- Decoder term: D(T_{d/f} z) vs T_d sg(D(z)).
Both are means over the valid (cropped) masks; sg = stop-gradient.
"""
from __future__ import annotations

import torch

from afcore import metrics, signal


def small_vae(channels=(32, 64, 64), latent_channels: int = 4, groups: int = 8):
    """A small AutoencoderKL: len(channels) levels, down-sampling factor 2**(len(channels) - 1)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * len(channels),
                         up_block_types=("UpDecoderBlock2D",) * len(channels), block_out_channels=tuple(channels),
                         layers_per_block=1, latent_channels=latent_channels, norm_num_groups=groups)


def factor(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def encode(vae, x):
    return vae.encode(x).latent_dist.mean


def decode(vae, z):
    return vae.decode(z).sample


def random_image_shift(size: int, generator: torch.Generator, max_fraction: float = 0.375) -> tuple[int, int]:
    limit = int(max_fraction * size)
    dy, dx = torch.randint(-limit, limit + 1, (2,), generator=generator).tolist()
    return dy, dx


def _masked_mse(pred, target, mask):
    m = mask.expand_as(pred)
    return ((pred - target) ** 2 * m).sum() / m.sum().clamp(min=1)


def equivariance_losses(vae, x, z, d) -> tuple[torch.Tensor, torch.Tensor]:
    """(encoder term, decoder term) for an integer image shift d and the latent z = E(x) of the batch."""
    f = factor(vae)
    dl = (d[0] / f, d[1] / f)
    shifted_x, _ = signal.shift(x, d, mode="crop")
    target_z, mask_z = signal.shift(z.detach(), dl, mode="crop")
    mask_z = mask_z * signal.valid_mask(z.shape[-2:], dl, z.device)
    enc = _masked_mse(encode(vae, shifted_x) * mask_z, target_z, mask_z)
    shifted_z, _ = signal.shift(z, dl, mode="crop")
    with torch.no_grad():
        target_x, mask_x = signal.shift(decode(vae, z.detach()), d, mode="crop")
    dec = _masked_mse(decode(vae, shifted_z) * mask_x, target_x, mask_x)
    return enc, dec


def vae_loss(vae, x, generator, kl_weight: float = 1e-6, eq_weight: float = 0.0):
    """Reconstruction MSE + kl_weight KL + eq_weight (encoder + decoder equivariance terms)."""
    posterior = vae.encode(x).latent_dist
    z = posterior.mean
    recon = decode(vae, posterior.sample(generator=None) if vae.training else z)
    mse = torch.mean((recon - x) ** 2)
    kl = posterior.kl().mean() / x[0].numel()
    logs = {"mse": mse.item(), "kl": kl.item()}
    loss = mse + kl_weight * kl
    if eq_weight > 0:
        d = random_image_shift(x.shape[-1], generator)
        enc, dec = equivariance_losses(vae, x, z, d)
        loss = loss + eq_weight * (enc + dec)
        logs.update(eq_enc=enc.item(), eq_dec=dec.item())
    return loss, logs


@torch.no_grad()
def enc_dec_spsnr(vae, x, shift_px: tuple[float, float]) -> tuple[float, float]:
    """Enc SPSNR (image shift d, latent shift d/f) and Dec SPSNR (latent shift d/f, image shift d), cropped, peak 2.

    The decoder's target range is [-1, 1] (peak 2); the latent's range is not, so Enc SPSNR uses the latent's
    dynamic range (max - min of E(x)) as its peak, AF-LDM's convention for latents.
    """
    f = factor(vae)
    z = encode(vae, x)
    latent_peak = float(z.max() - z.min())
    enc = metrics.spsnr(lambda t: encode(vae, t), x, shift_px, scale=1.0 / f, peak=latent_peak, fx=z)
    dec = metrics.spsnr(lambda t: decode(vae, t), z, (shift_px[0] / f, shift_px[1] / f), scale=float(f))
    return float(enc), float(dec)
