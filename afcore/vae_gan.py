"""The AF-VAE's perceptual and GAN add-ons: the parts of the reference loss beyond MSE + KL + equivariance.

Taught by notebook 20_af_vae (``afcore.vae`` holds the VAE, its core loss and SPSNRs; this module imports it, never
the reverse):
- ``PerceptualFeatures`` / ``perceptual_distance``: an offline LPIPS stand-in (frozen, seeded random conv features,
  LPIPS's channel-unit normalisation, no learned channel weights); a real LPIPS-like net plugs in via ``weights_path``.
- ``PatchDiscriminator`` (optionally alias-free), ``hinge_d_loss`` / ``hinge_g_loss``, and ``VAEWithDiscriminator``
  which lets the single-optimizer ``afcore.train.train_loop`` train VAE and discriminator together.
- ``adaptive_weight``: VQGAN's balance of the generator's GAN term against the reconstruction term.
- ``PerceptualGANTerms``: the two terms as ``afcore.vae.vae_loss``'s ``extra``; ``vae_gan_loss``: the full reference
  loss (mse + enc + dec + perceptual + KL + adaptive hinge GAN) in one call.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from afcore import layers, vae as V

__all__ = ["PerceptualFeatures", "perceptual_distance", "PatchDiscriminator", "hinge_d_loss", "hinge_g_loss",
           "VAEWithDiscriminator", "adaptive_weight", "PerceptualGANTerms", "vae_gan_loss"]


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


def adaptive_weight(nll: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
    """VQGAN's balance ||grad_last nll|| / (||grad_last g|| + 1e-4), clamped to [0, 1e4], detached.

    It scales the generator's GAN term so its gradient at the decoder's last layer is as large as the
    reconstruction gradient there, whatever the two losses' raw scales are.
    """
    nll_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (nll_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, 1e4).detach()


# --- the full reference loss --------------------------------------------------------------------------------------

class PerceptualGANTerms:
    """The perceptual and hinge-GAN terms, plugged into ``afcore.vae.vae_loss`` as its ``extra``.

    ``add_reconstruction`` adds ``perceptual_weight`` x the perceptual distance (batch mean) to the reconstruction
    part nll (logged as "perc"); ``add_adversarial`` adds, from ``step >= gan_start``, the generator term scaled by
    ``gan_weight`` x the adaptive weight (VQGAN; computed at the decoder's last layer, and only when gradients are
    on: without them, in evaluation, ``gan_weight`` is used as it is) plus the discriminator term (logged as "g",
    "d", "gan_w"). ``wrapped`` is the ``VAEWithDiscriminator`` whose discriminator plays (needed when
    ``gan_weight > 0``).
    """

    def __init__(self, perceptual_weight: float = 0.0, perceptual: PerceptualFeatures | None = None,
                 gan_weight: float = 0.0, gan_start: int = 0, wrapped: VAEWithDiscriminator | None = None,
                 adaptive: bool = True):
        for name, value in (("perceptual_weight", perceptual_weight), ("gan_weight", gan_weight)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if perceptual_weight > 0 and not isinstance(perceptual, PerceptualFeatures):
            raise ValueError(f"perceptual must be a PerceptualFeatures when perceptual_weight > 0, got {perceptual!r}")
        if gan_weight > 0 and (wrapped is None or wrapped.disc is None):
            raise ValueError("gan_weight > 0 needs a discriminator: pass model=VAEWithDiscriminator(vae, "
                             "PatchDiscriminator(...)), or set gan_weight=0")
        self.perceptual_weight, self.perceptual = perceptual_weight, perceptual
        self.gan_weight, self.gan_start, self.wrapped, self.adaptive = gan_weight, gan_start, wrapped, adaptive

    def add_reconstruction(self, nll: torch.Tensor, recon: torch.Tensor, x: torch.Tensor, logs: dict) -> torch.Tensor:
        if self.perceptual_weight > 0:
            perc = perceptual_distance(self.perceptual.to(x.device), recon, x).mean()
            nll = nll + self.perceptual_weight * perc
            logs["perc"] = perc.item()
        return nll

    def add_adversarial(self, loss: torch.Tensor, nll: torch.Tensor, vae, x: torch.Tensor, recon: torch.Tensor,
                        step: int, logs: dict) -> torch.Tensor:
        if not (self.gan_weight > 0 and step >= self.gan_start):
            return loss
        g = self.wrapped.generator_loss(recon)
        weight = torch.tensor(float(self.gan_weight), device=x.device)
        if self.adaptive and torch.is_grad_enabled() and g.requires_grad and nll.requires_grad:
            weight = self.gan_weight * adaptive_weight(nll, g, vae.decoder.conv_out.weight)
        d_loss = self.wrapped.discriminator_loss(x, recon)
        loss = loss + weight * g + d_loss
        logs.update(g=g.item(), d=d_loss.item(), gan_w=float(weight))
        return loss


def vae_gan_loss(model, x, generator, kl_weight: float = 1e-6, eq_weight: float = 0.0,
                 perceptual_weight: float = 0.0, perceptual=None, gan_weight: float = 0.0, gan_start: int = 0,
                 step: int = 0, adaptive_gan_weight: bool = True, posterior: str = "sample", kl_norm: str = "batch"):
    """The reference trainer's loss: ``afcore.vae.vae_loss`` (MSE + KL + equivariance terms; its arguments) plus
    ``perceptual_weight`` x perceptual distance and the hinge GAN (generator term with the adaptive weight, and the
    discriminator term), through ``PerceptualGANTerms``.

    ``model`` is an AutoencoderKL or a ``VAEWithDiscriminator`` (needed when ``gan_weight > 0``). The GAN terms
    are active from ``step >= gan_start``. Returns ``(loss, logs)``; logs hold "mse", "kl" (+ "perc", "eq_enc",
    "eq_dec", "g", "d", "gan_w" for the active terms).
    """
    model = V.unwrap(model)
    wrapped = model if isinstance(model, VAEWithDiscriminator) else None
    vae = wrapped.vae if wrapped is not None else model
    V.check_loss_args(posterior, kl_norm, kl_weight=kl_weight, eq_weight=eq_weight,
                      perceptual_weight=perceptual_weight, gan_weight=gan_weight)
    terms = PerceptualGANTerms(perceptual_weight, perceptual, gan_weight, gan_start, wrapped, adaptive_gan_weight)
    return V.vae_loss(vae, x, generator, kl_weight=kl_weight, eq_weight=eq_weight, posterior=posterior,
                      kl_norm=kl_norm, step=step, extra=terms)
