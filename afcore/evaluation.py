"""Sample-quality metrics with features that need no download: IS, FID and KID from a small trained classifier.

Taught by notebooks 11_classifier and 13_configs_eval. Inception-based FID needs weights this machine cannot fetch,
so by default the features are the penultimate layer (and the logits, for IS) of ``DigitClassifier`` trained on the
same data set in the classifier stage. Metric names carry the feature extractor, e.g. ``FID[clf-mnist]``: such
numbers are comparable across our configs, never to the paper's Inception-based numbers.

API (used by 11_classifier, the Config A-E evaluation and AF-LDM):
- ``fid_kid_is(real, fake, features=clf_or_"inception"|"auto", tag=..., device=...)`` -> dict with keys
  ``IS[<f>]``, ``FID[<f>]``, ``KIDx100[<f>]``, ``KIDx100_std[<f>]`` where ``<f>`` is ``clf-<tag>``, ``rand-<tag>``
  or ``inception``. Images are float (N, C, 32, 32) in [-1, 1]. ``quality_metrics`` is the same with a classifier.
- ``frechet_distance``, ``kernel_inception_distance``, ``inception_score`` on precomputed features (float64; tested
  against torchmetrics and against a hand-written unbiased MMD), ``extract`` (features batch by batch on a device).
- ``inception_available()`` -> (bool, reason): torch-fidelity installed and its FID weights cached locally.
- ``DigitClassifier`` (features 64-d, logits 10), ``calibrate_batchnorm(model, images)``, ``random_features(in_channels, seed)`` (a frozen random CNN,
  the honest choice for the unlabelled natural32 stand-in), ``load_classifier(path)``, ``save_classifier``,
  ``accuracy``, ``classifier_loss`` (for ``afcore.train.train_loop``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DigitClassifier(nn.Module):
    """A small CNN for 32x32 images: features (64-d, non-negative) -> logits (10).

    Features are the global average of the last ReLU layer (like Inception's pool features), divided by one scalar
    ``feature_scale`` (a buffer) set by ``calibrate_batchnorm`` so that the training set's features have unit RMS per
    dimension. One scalar for all dimensions keeps the feature geometry: FID and KID then have the usual magnitudes
    (FID of tens for clearly different sets, KID x100 of a few units). An earlier version standardised every dimension
    separately (a non-affine BatchNorm); dimensions that barely vary on real digits were then divided by a tiny
    standard deviation, and off-distribution samples produced FID in the thousands and KID x100 in the millions.
    """

    def __init__(self, in_channels: int = 1, n_classes: int = 10):
        super().__init__()
        self.init_args = dict(in_channels=in_channels, n_classes=n_classes)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.register_buffer("feature_scale", torch.ones((), device="cpu"))
        # the head standardises its input (a BatchNorm without parameters) before the linear layer: it trains as
        # well as a classifier whose features are standardised, while the features themselves stay unstandardised
        self.head = nn.Sequential(nn.BatchNorm1d(64, affine=False), nn.Linear(64, n_classes))

    def features(self, x):
        return self.body(x) / self.feature_scale

    def forward(self, x):
        return self.head(self.features(x))


@torch.no_grad()
def extract(classifier: DigitClassifier, images: torch.Tensor, device="cpu", batch: int = 500,
            logits: bool = False) -> torch.Tensor:
    """Features (or logits) of ``images`` in float64 on the CPU, computed batch by batch on ``device``."""
    device = torch.device(device)
    model = classifier.eval().to(device)
    out = []
    for i in range(0, len(images), batch):
        x = images[i:i + batch].to(device, torch.float32)
        out.append((model(x) if logits else model.features(x)).double().cpu())
    return torch.cat(out)


def _sqrtm_psd(m: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def frechet_distance(real_feats: torch.Tensor, fake_feats: torch.Tensor) -> float:
    """FID between two feature sets (float64): |mu_r - mu_f|^2 + tr(C_r + C_f - 2 (C_r^1/2 C_f C_r^1/2)^1/2).

    Covariances are unbiased (divide by n - 1), as in torchmetrics and the original implementation; the trace of the
    matrix square root is taken in the symmetric form, which equals tr((C_r C_f)^1/2).
    """
    a, b = real_feats.double(), fake_feats.double()
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be (n, d) with the same d, got {tuple(a.shape)} and {tuple(b.shape)}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("FID needs at least 2 real and 2 fake feature vectors")
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = torch.cov(a.T), torch.cov(b.T)
    root_a = _sqrtm_psd(ca)
    cross = _sqrtm_psd(root_a @ cb @ root_a)
    return float(((mu_a - mu_b) ** 2).sum() + torch.trace(ca) + torch.trace(cb) - 2 * torch.trace(cross))


def _poly_mmd2(x: torch.Tensor, y: torch.Tensor, degree: int = 3, coef: float = 1.0) -> torch.Tensor:
    """Unbiased MMD^2 with the polynomial kernel k(a, b) = (a.b / d + coef)^degree (KID's kernel)."""
    d, m = x.shape[1], len(x)
    kxx, kyy, kxy = ((x @ x.T) / d + coef) ** degree, ((y @ y.T) / d + coef) ** degree, ((x @ y.T) / d + coef) ** degree
    off = lambda k: k.sum() - k.diagonal().sum()  # noqa: E731
    return (off(kxx) + off(kyy)) / (m * (m - 1)) - 2 * kxy.mean()


def kernel_inception_distance(real_feats: torch.Tensor, fake_feats: torch.Tensor, subset_size: int = 100,
                              subsets: int = 100, generator: torch.Generator | None = None) -> tuple[float, float]:
    """KID (Binkowski et al.): mean and standard deviation over ``subsets`` random subsets of ``subset_size``
    (drawn without replacement within a subset) of the unbiased polynomial-kernel MMD^2. Can be slightly negative."""
    a, b = real_feats.double(), fake_feats.double()
    k = min(subset_size, len(a), len(b))
    if k < 2:
        raise ValueError(f"KID needs subsets of at least 2 images, got subset_size={subset_size} with "
                         f"{len(a)} real and {len(b)} fake")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    values = torch.stack([_poly_mmd2(a[torch.randperm(len(a), generator=g, device="cpu")[:k]],
                                     b[torch.randperm(len(b), generator=g, device="cpu")[:k]]) for _ in range(subsets)])
    return float(values.mean()), float(values.std(unbiased=False))


def inception_score(logits: torch.Tensor) -> float:
    """IS = exp(E_x KL(p(y|x) || p(y))) with one split (p(y) the mean prediction over all images)."""
    p = torch.softmax(logits.double(), dim=1)
    log_p = torch.log_softmax(logits.double(), dim=1)
    marginal = p.mean(0, keepdim=True)
    return float(torch.exp((p * (log_p - torch.log(marginal))).sum(1).mean()))


def quality_metrics(real: torch.Tensor, fake: torch.Tensor, classifier: DigitClassifier, tag: str,
                    kid_subset: int = 100, device="cpu", kid_subsets: int = 100) -> dict:
    """IS, FID and KID (x100, as the paper reports) of ``fake`` against ``real``, with classifier features.

    Keys are ``IS[clf-<tag>]``, ``FID[...]``, ``KIDx100[...]`` and ``KIDx100_std[...]`` (the standard deviation of
    KID over its ``kid_subsets`` subsets of ``min(kid_subset, len(real), len(fake))`` images); ``rand-<tag>`` for
    ``random_features`` modules. Features are computed on ``device``; the statistics in float64 on the CPU.
    """
    fr = extract(classifier, real, device)
    ff = extract(classifier, fake, device)
    kid_mean, kid_std = kernel_inception_distance(fr, ff, kid_subset, kid_subsets)
    f = f"{getattr(classifier, 'feature_kind', 'clf')}-{tag}"
    return {f"IS[{f}]": inception_score(extract(classifier, fake, device, logits=True)),
            f"FID[{f}]": frechet_distance(fr, ff),
            f"KIDx100[{f}]": kid_mean * 100, f"KIDx100_std[{f}]": kid_std * 100}


def accuracy(classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 500) -> float:
    """Top-1 accuracy (classifier put in eval mode)."""
    classifier.eval()
    with torch.no_grad():
        correct = sum(int((classifier(images[i:i + batch]).argmax(1) == labels[i:i + batch]).sum())
                      for i in range(0, len(images), batch))
    return correct / len(images)


def classifier_loss(model, batch, step):
    images, labels = batch
    logits = model(images)
    loss = F.cross_entropy(logits, labels)
    return loss, {"train_acc": float((logits.argmax(1) == labels).float().mean())}


def save_classifier(model: DigitClassifier, path) -> None:
    from afcore.utils import save_checkpoint

    save_checkpoint({"init_args": model.init_args, "state_dict": model.state_dict(),
                     "feature_kind": getattr(model, "feature_kind", "clf")}, path)


def load_classifier(path) -> DigitClassifier:
    from afcore.utils import load_checkpoint

    state = load_checkpoint(path, "a classifier checkpoint", "classifier")
    model = DigitClassifier(**state["init_args"])
    if "feature_scale" not in state["state_dict"]:
        raise ValueError(f"{path} was saved by an older DigitClassifier (per-dimension standardised features): "
                         "re-run the classifier stage (`dvc repro classifier`)")
    model.load_state_dict(state["state_dict"])
    model.feature_kind = state.get("feature_kind", "clf")
    return model.eval()


def random_features(in_channels: int = 3, seed: int = 0, calibrate: torch.Tensor | None = None) -> DigitClassifier:
    """A frozen, randomly initialised ``DigitClassifier`` (seeded): random-CNN features for unlabelled data sets.

    Random convolutional features still separate image statistics (FID of a set with itself is 0 and grows with
    distribution shift), but their IS is meaningless: the "logits" are not class predictions. Name: ``rand-<tag>``.
    ``calibrate``: images (e.g. the training set) whose statistics set the BatchNorm layers (cumulative average, no
    weights change), so the features are standardised like a trained classifier's.
    """
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = DigitClassifier(in_channels)
    torch.random.set_rng_state(gen_state)
    if calibrate is not None:
        calibrate_batchnorm(model, calibrate)
    for p in model.parameters():
        p.requires_grad_(False)
    model.feature_kind = "rand"
    return model.eval()


def calibrate_batchnorm(model: DigitClassifier, images: torch.Tensor, batch: int = 500) -> DigitClassifier:
    """Recompute every BatchNorm's running statistics as the exact average over ``images`` (weights unchanged), then
    set ``feature_scale`` so the features of ``images`` have unit RMS per dimension.

    Used after training (the momentum-averaged statistics of a short run lag behind the weights) and for the random
    features. Returns the model in eval mode.
    """
    model.to(images.device)
    body_norms = [m for m in model.body.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    head_norms = [m for m in model.head.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def exact_statistics(norms, run):
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average over the calibration batches
        model.eval()
        for m in norms:
            m.train()  # only these layers collect statistics; the others are already calibrated
        with torch.no_grad():
            for i in range(0, len(images), batch):
                run(images[i:i + batch].float())
        for m in norms:
            m.momentum = 0.1
        model.eval()

    exact_statistics(body_norms, model.body)
    with torch.no_grad():
        feats = torch.cat([model.body(images[i:i + batch].float()) for i in range(0, len(images), batch)])
        model.feature_scale.copy_(feats.double().pow(2).mean().sqrt().clamp(min=1e-12).float())
    exact_statistics(head_norms, model)  # the head's standardisation sees the rescaled features
    return model


INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"


def inception_available() -> tuple[bool, str]:
    """Whether torchmetrics' Inception FID can run offline: torch-fidelity installed and its weights cached."""
    import importlib.util
    from pathlib import Path

    if importlib.util.find_spec("torch_fidelity") is None:
        return False, "torch-fidelity is not installed (Inception features unavailable; using classifier features)"
    hub = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS
    if not hub.exists():
        return False, f"Inception weights not found at {hub} (no download offline; using classifier features)"
    return True, "Inception-v3 (torch-fidelity FID weights)"


def fid_kid_is(real: torch.Tensor, fake: torch.Tensor, features="auto", tag: str | None = None,
               kid_subset: int = 100, device="cpu") -> dict:
    """IS, FID and KID x100 of ``fake`` against ``real`` (float, [-1, 1]).

    ``features``: an ``nn.Module`` with ``features``/``head`` (a ``DigitClassifier``; ``tag`` names it in the keys,
    e.g. ``clf-mnist``), ``"inception"`` (raises ``RuntimeError`` with the reason when its weights are missing) or
    ``"auto"`` (Inception when available, else ``ValueError`` asking for a classifier). Random-feature modules from
    ``random_features`` are tagged ``rand-<tag>``.
    """
    if isinstance(features, str):
        if features not in ("inception", "auto"):
            raise ValueError(f"features must be a classifier module, 'inception' or 'auto', got {features!r}")
        ok, reason = inception_available()
        if not ok:
            if features == "inception":
                raise RuntimeError(reason)
            raise ValueError(f"features='auto': {reason}; pass features=<trained classifier> "
                             "(afcore.evaluation.load_classifier('checkpoints/classifier/<dataset>.pt'))")
        return _inception_metrics(real, fake, kid_subset)
    if not isinstance(features, DigitClassifier):
        raise ValueError(f"features must be a DigitClassifier, 'inception' or 'auto', got {type(features).__name__}")
    if tag is None:
        raise ValueError("tag: name the feature extractor's data set, e.g. tag='mnist' -> FID[clf-mnist]")
    return quality_metrics(real, fake, features, tag, kid_subset=kid_subset, device=device)


def _inception_metrics(real, fake, kid_subset):
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.inception import InceptionScore
    from torchmetrics.image.kid import KernelInceptionDistance

    def to_uint8(x):
        x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x

    real, fake = to_uint8(real), to_uint8(fake)
    fid, score = FrechetInceptionDistance(feature=2048), InceptionScore(splits=1)
    kid = KernelInceptionDistance(subset_size=min(kid_subset, len(real), len(fake)))
    for metric in (fid, kid):
        metric.update(real, real=True)
        metric.update(fake, real=False)
    score.update(fake)
    kid_mean, kid_std = kid.compute()
    return {"IS[inception]": float(score.compute()[0]), "FID[inception]": float(fid.compute()),
            "KIDx100[inception]": float(kid_mean) * 100, "KIDx100_std[inception]": float(kid_std) * 100}
