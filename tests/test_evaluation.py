"""IS / FID / KID with classifier features (afcore.evaluation) on constructed inputs."""
import numpy as np
import pytest
import scipy.linalg
import torch

from afcore import evaluation as ev

torch.set_num_threads(1)


def _images(n, seed, shift=0.0, channels=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, channels, 32, 32, generator=g) * 1.4 - 0.7 + shift).clamp(-1, 1)


class OneHotOracle(ev.DigitClassifier):
    """Class k for an image of constant value -1 + 2k/10: logits are a sharp one-hot, features the one-hot too."""

    def __init__(self):
        super().__init__(1)
        self.head = torch.nn.Linear(10, 10)  # feature width 10 (torchmetrics reads it from the adapter)

    def features(self, x):
        k = ((x.mean(dim=(1, 2, 3)) + 1) / 2 * 10).round().clamp(0, 9).long()
        return torch.nn.functional.one_hot(k, 10).float() * 50.0

    def forward(self, x):
        return self.features(x)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_mean_shift():
    feats = ev.random_features(1, seed=0)
    real = _images(150, 0)
    same = ev.fid_kid_is(real, real, feats, tag="t")["FID[rand-t]"]
    fids = [ev.fid_kid_is(real, _images(150, 1, shift=s), feats, tag="t")["FID[rand-t]"] for s in (0.0, 0.1, 0.3)]
    assert abs(same) < 1e-6
    assert fids[0] < fids[1] < fids[2]


def test_fid_matches_scipy_reference():
    feats = ev.random_features(1, seed=2)
    real, fake = _images(120, 3), _images(120, 4, shift=0.2)
    ours = ev.fid_kid_is(real, fake, feats, tag="t")["FID[rand-t]"]
    with torch.no_grad():
        a, b = feats.features(real).double().numpy(), feats.features(fake).double().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = ((mu_a - mu_b) ** 2).sum() + np.trace(ca + cb - 2 * np.real(scipy.linalg.sqrtm(ca @ cb)))
    assert ours == pytest.approx(ref, rel=1e-3, abs=1e-6)


def test_kid_is_about_zero_for_one_distribution_and_positive_for_another():
    feats = ev.random_features(3, seed=0)
    real = _images(200, 5, channels=3)
    same = ev.fid_kid_is(real, _images(200, 6, channels=3), feats, tag="t", kid_subset=100)
    other = ev.fid_kid_is(real, _images(200, 7, shift=0.3, channels=3), feats, tag="t", kid_subset=100)
    assert abs(same["KIDx100[rand-t]"]) < 0.2 * other["KIDx100[rand-t]"]
    assert other["KIDx100[rand-t]"] > 0


def test_inception_score_of_uniform_one_hot_predictions_is_n_classes():
    oracle = OneHotOracle()
    levels = torch.arange(10).repeat(20).float() / 10 * 2 - 1
    fake = levels.view(-1, 1, 1, 1).expand(-1, 1, 32, 32).contiguous()
    out = ev.fid_kid_is(fake, fake, oracle, tag="oracle")
    assert out["IS[clf-oracle]"] == pytest.approx(10.0, rel=1e-4)
    one_class = torch.full((50, 1, 32, 32), -1.0)
    assert ev.fid_kid_is(fake, one_class, oracle, tag="oracle")["IS[clf-oracle]"] == pytest.approx(1.0, rel=1e-4)


def test_bad_features_and_missing_inception_are_explained():
    x = _images(10, 0)
    with pytest.raises(ValueError, match="features"):
        ev.fid_kid_is(x, x, features="vgg")
    with pytest.raises(ValueError, match="tag"):
        ev.fid_kid_is(x, x, ev.random_features(1))
    ok, reason = ev.inception_available()
    if not ok:
        with pytest.raises(RuntimeError):
            ev.fid_kid_is(x, x, features="inception")
        with pytest.raises(ValueError, match="classifier"):
            ev.fid_kid_is(x, x, features="auto")
        assert "Inception" in reason or "torch-fidelity" in reason


def test_classifier_save_load_roundtrip_and_accuracy(tmp_path):
    model = ev.random_features(3, seed=1)
    ev.save_classifier(model, tmp_path / "c.pt")
    back = ev.load_classifier(tmp_path / "c.pt")
    x = _images(8, 0, channels=3)
    assert torch.equal(model(x), back(x)) and back.feature_kind == "rand"
    labels = model(x).argmax(1)
    assert ev.accuracy(back, x, labels) == 1.0
    with pytest.raises(FileNotFoundError, match="classifier stage"):
        ev.load_classifier(tmp_path / "missing.pt")


def test_calibrated_random_features_are_standardised():
    x = _images(300, 9, channels=3)
    feats = ev.random_features(3, seed=0, calibrate=x)
    with torch.no_grad():
        f = feats.features(x)
    assert f.mean(0).abs().max() < 1e-3
    assert torch.allclose(f.var(0, unbiased=False), torch.ones(64), atol=1e-2)
    assert not any(p.requires_grad for p in feats.parameters())
