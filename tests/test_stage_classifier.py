"""Stage ``classifier``: feature extractors saved per data set, and a sanity table whose order of defects holds."""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from afcore import evaluation
from afcore.stages import classifier as stage
from afcore.stages.common import ConfigError
from afcore.utils import _jsonable


def private_copy(root, dest, *parts):
    """Upstream artifacts copied out of the shared workspace, so this stage's outputs (on any device) stay private."""
    for part in parts:
        shutil.copytree(root / part, dest / part)
    return dest


def test_run_saves_extractors_and_a_sanity_table(stage_device, device_checks, smoke_workspace, smoke_params, tmp_path):
    root = private_copy(smoke_workspace("data"), tmp_path, "data")
    cfg = stage.Config.from_params(smoke_params)
    threads = torch.get_num_threads()
    with device_checks(stage_device):
        results = stage.run(cfg, stage_device, root)
    assert torch.get_num_threads() == threads  # the stage's single CPU thread is not left behind
    written = json.loads((root / "metrics/11_classifier.json").read_text())
    assert written == json.loads(json.dumps(_jsonable(results)))  # NaN (IS of random features) written as "nan"
    assert (root / "figures/11_classifier/loss.png").stat().st_size > 0
    for name in cfg.classifier_datasets:
        assert 0.0 <= results[name]["test_accuracy"] <= 1.0
        assert evaluation.load_classifier(root / f"checkpoints/classifier/{name}.pt").feature_kind == "clf"
    for name in cfg.random_feature_datasets:
        assert results[name]["features"] == f"rand-{name}"
        assert evaluation.load_classifier(root / f"checkpoints/classifier/{name}.pt").feature_kind == "rand"
    rows = results["sanity"]
    names = list(cfg.classifier_datasets) + list(cfg.random_feature_datasets)
    assert [r["dataset"] for r in rows] == [n for n in names for _ in stage.SANITY]
    for name in names:
        by = {r["compared"]: r for r in rows if r["dataset"] == name}
        assert all(math.isfinite(r["FID"]) and math.isfinite(r["KIDx100"]) and r["KIDx100_std"] >= 0
                   for r in by.values())
        # pure noise is further from the test images than the other half of them, in every feature space
        assert by["pure noise images"]["FID"] > by["other test images"]["FID"]
        if name in cfg.classifier_datasets:
            assert all(r["IS"] >= 1.0 - 1e-9 for r in by.values())
        else:
            assert all(math.isnan(r["IS"]) for r in by.values())  # meaningless for random features: not reported


def test_an_unlabelled_set_cannot_train_a_classifier(smoke_workspace, smoke_params):
    cfg = stage.Config.from_params(smoke_params, classifier_datasets=["natural32"])
    with pytest.raises(ConfigError, match="classifier_datasets.*no labels"):
        stage.train_classifier(cfg, "natural32", torch.device("cpu"), smoke_workspace("data"))


def test_a_missing_data_set_is_named(tmp_path, smoke_params):
    cfg = stage.Config.from_params(smoke_params)
    with pytest.raises(ConfigError, match="random_feature_datasets: data/natural32.pt missing"):
        stage.random_extractor(cfg, "natural32", torch.device("cpu"), tmp_path)


@pytest.mark.parametrize("change, key", [({"classifier_batch": 1}, "classifier_batch"),
                                         ({"classifier_lr": 0.0}, "classifier_lr"),
                                         ({"classifier_datasets": ["svhn"]}, "classifier_datasets"),
                                         ({"sanity_images": 1}, "sanity_images"),
                                         ({"classifier_steps": 0}, "classifier_steps")])
def test_bad_values_raise_config_errors_naming_the_key(smoke_params, change, key):
    with pytest.raises(ConfigError, match=key):
        stage.Config.from_params(smoke_params, **change)
