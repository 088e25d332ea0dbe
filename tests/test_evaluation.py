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


def test_calibrated_features_have_unit_rms_with_one_scale_for_all_dimensions():
    x = _images(300, 9, channels=3)
    feats = ev.random_features(3, seed=0, calibrate=x)
    with torch.no_grad():
        f = feats.features(x)
        raw = feats.body(x)
    assert float(f.pow(2).mean()) == pytest.approx(1.0, rel=1e-4)
    # one scalar for every dimension: the ratio raw / scaled is the same everywhere (geometry kept)
    torch.testing.assert_close(raw, f * feats.feature_scale, rtol=1e-5, atol=1e-6)
    assert not any(p.requires_grad for p in feats.parameters())


def _tm_features(d):
    class Identity(torch.nn.Module):
        num_features = d

        def forward(self, x):
            return x.flatten(1).double()
    return Identity()


def test_fid_equals_torchmetrics_on_identical_features():
    from torchmetrics.image.fid import FrechetInceptionDistance

    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 16, generator=g, dtype=torch.float64)
    b = torch.randn(250, 16, generator=g, dtype=torch.float64) * 1.3 + 0.4
    tm = FrechetInceptionDistance(feature=_tm_features(16), input_img_size=(16,)).set_dtype(torch.float64)
    tm.update(a, real=True)
    tm.update(b, real=False)
    assert ev.frechet_distance(a, b) == pytest.approx(float(tm.compute()), rel=1e-6)


def test_kid_on_the_full_set_equals_torchmetrics_and_a_hand_computed_unbiased_mmd():
    from torchmetrics.image.kid import KernelInceptionDistance

    g = torch.Generator().manual_seed(1)
    a = torch.randn(12, 5, generator=g, dtype=torch.float64)
    b = torch.randn(12, 5, generator=g, dtype=torch.float64) + 0.5
    # by hand: unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3, off-diagonal means for the within-set terms
    k = lambda x, y: (float(x @ y) / 5 + 1) ** 3  # noqa: E731
    n = 12
    kxx = sum(k(a[i], a[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kyy = sum(k(b[i], b[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kxy = sum(k(a[i], b[j]) for i in range(n) for j in range(n)) / (n * n)
    mean, std = ev.kernel_inception_distance(a, b, subset_size=n, subsets=3)
    assert mean == pytest.approx(kxx + kyy - 2 * kxy, rel=1e-9)
    assert std == pytest.approx(0.0, abs=1e-12)  # every subset is the whole set
    tm = KernelInceptionDistance(feature=_tm_features(5), subset_size=n, subsets=3)
    tm.update(a, real=True)
    tm.update(b, real=False)
    assert mean == pytest.approx(float(tm.compute()[0]), rel=1e-6)


def test_inception_score_equals_torchmetrics_on_identical_logits():
    from torchmetrics.image.inception import InceptionScore

    class Identity(torch.nn.Module):
        def forward(self, x):
            return x

    logits = torch.randn(200, 10, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 3
    tm = InceptionScore(feature=Identity(), splits=1)
    tm.update(logits)
    assert ev.inception_score(logits) == pytest.approx(float(tm.compute()[0]), rel=1e-6)


def test_an_unrecognisable_fake_set_gives_fid_and_kid_of_the_usual_magnitude():
    """Constructed images against noise (what an untrained model samples): FID large but in the usual
    tens-to-hundreds range, not the thousands that per-dimension standardisation produced, and it ranks a mild
    shift below pure noise."""
    real = _images(300, 10)
    feats = ev.random_features(1, seed=0, calibrate=real)
    noise = torch.randn(300, 1, 32, 32, generator=torch.Generator().manual_seed(3)).clamp(-1, 1)
    out = ev.fid_kid_is(real, noise, feats, tag="t")
    mild = ev.fid_kid_is(real, _images(300, 11, shift=0.1), feats, tag="t")
    assert 1.0 < out["FID[rand-t]"] < 500
    assert 0.0 < mild["FID[rand-t]"] < out["FID[rand-t]"]
    assert 0.0 < mild["KIDx100[rand-t]"] < out["KIDx100[rand-t]"]
    assert out["KIDx100_std[rand-t]"] > 0
