"""Sample-quality metrics with features that need no download: IS, FID and KID from a small trained classifier.

Taught by notebooks 11_classifier and 13_configs_eval. Inception-based FID needs weights this machine cannot fetch,
so by default the features are the penultimate layer (and the logits, for IS) of ``DigitClassifier`` trained on the
same data set in the classifier stage. Metric names carry the feature extractor, e.g. ``FID[clf-mnist]``: such
numbers are comparable across our configs, never to the paper's Inception-based numbers.

API (used by 11_classifier, the Config A-E evaluation and AF-LDM):
- ``fid_kid_is(real, fake, features=clf_or_"inception"|"auto", tag=...)`` -> dict with keys ``IS[<f>]``,
  ``FID[<f>]``, ``KIDx100[<f>]``, ``KIDx100_std[<f>]`` where ``<f>`` is ``clf-<tag>``, ``rand-<tag>`` or
  ``inception``. Images are float (N, C, 32, 32) in [-1, 1]. ``quality_metrics`` is the same with a classifier.
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
    """A small CNN for 32x32 images: features (64-d) -> logits (10).

    The features end in a non-affine BatchNorm, so in eval mode they are standardised with the training set's
    statistics (about unit variance per dimension): FID is in comparable units across data sets and KID's cubic
    polynomial kernel ``(x.y / d + 1)^3`` stays well scaled.
    """

    def __init__(self, in_channels: int = 1, n_classes: int = 10):
        super().__init__()
        self.init_args = dict(in_channels=in_channels, n_classes=n_classes)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.BatchNorm1d(64, affine=False),
        )
        self.head = nn.Linear(64, n_classes)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.body(x))


class _Features(nn.Module):
    """Adapter for torchmetrics: float images in [-1, 1] -> features (or logits)."""

    def __init__(self, classifier: DigitClassifier, logits: bool = False):
        super().__init__()
        self.classifier, self.logits = classifier.eval(), logits
        self.num_features = classifier.head.out_features if logits else classifier.head.in_features

    @torch.no_grad()
    def forward(self, x):
        x = x.float()
        return self.classifier(x) if self.logits else self.classifier.features(x)


def quality_metrics(real: torch.Tensor, fake: torch.Tensor, classifier: DigitClassifier, tag: str,
                    kid_subset: int = 100) -> dict:
    """IS, FID and KID (x100, as the paper reports) of ``fake`` against ``real``, with classifier features.

    Keys are ``IS[clf-<tag>]`` etc. (``rand-<tag>`` for ``random_features`` modules). KID uses subsets of
    ``min(kid_subset, len(real), len(fake))`` images and is the unbiased MMD estimate (can be slightly negative).
    """
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.inception import InceptionScore
    from torchmetrics.image.kid import KernelInceptionDistance

    size = tuple(real.shape[1:])
    fid = FrechetInceptionDistance(feature=_Features(classifier), input_img_size=size)
    kid = KernelInceptionDistance(feature=_Features(classifier), subset_size=min(kid_subset, len(real), len(fake)))
    score = InceptionScore(feature=_Features(classifier, logits=True), splits=1)
    for metric in (fid, kid):
        metric.update(real, real=True)
        metric.update(fake, real=False)
    score.update(fake)
    kid_mean, kid_std = kid.compute()
    f = f"{getattr(classifier, 'feature_kind', 'clf')}-{tag}"
    return {f"IS[{f}]": float(score.compute()[0]), f"FID[{f}]": float(fid.compute()),
            f"KIDx100[{f}]": float(kid_mean) * 100, f"KIDx100_std[{f}]": float(kid_std) * 100}


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
    from afcore.utils import _atomic_write

    _atomic_write(path, lambda tmp: torch.save({"init_args": model.init_args, "state_dict": model.state_dict(),
                                                     "feature_kind": getattr(model, "feature_kind", "clf")}, tmp))


def load_classifier(path) -> DigitClassifier:
    from pathlib import Path

    if not Path(path).exists():
        raise FileNotFoundError(f"{path} not found: run the classifier stage first (`dvc repro classifier`)")
    state = torch.load(path, map_location="cpu", weights_only=False)
    model = DigitClassifier(**state["init_args"])
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
    """Recompute every BatchNorm's running statistics as the exact average over ``images`` (weights unchanged).

    Used after training (the momentum-averaged statistics of a short run lag behind the weights) and for the random
    features. Returns the model in eval mode.
    """
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average over the calibration batches
    model.train()
    with torch.no_grad():
        for i in range(0, len(images), batch):
            model.body(images[i:i + batch].float())
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.1
    return model.eval()


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
               kid_subset: int = 100) -> dict:
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
    return quality_metrics(real, fake, features, tag, kid_subset=kid_subset)


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
