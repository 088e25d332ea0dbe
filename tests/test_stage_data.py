"""Stage ``data``: the splits are written with the sizes and checksums the metrics record, deterministically."""
from __future__ import annotations

import json

import pytest
import torch

from afcore import data as afdata
from afcore.stages import data as stage
from afcore.stages.common import ConfigError


def test_run_writes_splits_whose_checksums_the_metrics_record(stage_device, device_checks, smoke_workspace,
                                                              smoke_params):
    root = smoke_workspace()
    cfg = stage.Config.from_params(smoke_params)
    with device_checks(stage_device):
        summary = stage.run(cfg, stage_device, root)
    assert json.loads((root / "metrics/10_data.json").read_text()) == summary
    assert (root / "figures/10_data/samples.png").stat().st_size > 0
    assert list(summary["datasets"]) == list(cfg.datasets)
    for name, entry in summary["datasets"].items():
        parts = afdata.load_prepared(name, root=str(root / "data"))
        n_test = round(cfg.n_images * cfg.test_fraction)
        assert (entry["train"], entry["test"]) == (cfg.n_images - n_test, n_test)
        assert entry["sha256_train"] == afdata.checksum(parts["train"])
        assert entry["sha256_test"] == afdata.checksum(parts["test"])
        assert list(parts["train"].shape[1:]) == entry["shape"] and entry["shape"][-2:] == [32, 32]
        assert parts["train"].min() >= -1 and parts["train"].max() <= 1
        assert entry["labelled"] == (parts["train_labels"] is not None) == (name != "natural32")
    # MNIST-M is built from the MNIST digits: same labels, same order
    assert torch.equal(afdata.load_prepared("mnist", root=str(root / "data"))["train_labels"],
                       afdata.load_prepared("mnist_m", root=str(root / "data"))["train_labels"])


def test_a_rerun_repeats_byte_for_byte(tmp_path, smoke_params):
    cfg = stage.Config.from_params(smoke_params).replace(datasets=("mnist_m",))  # seeded photo patches and split
    first = stage.run(cfg, "cpu", tmp_path / "a")
    assert stage.run(cfg, "cpu", tmp_path / "b") == first
    assert (tmp_path / "a/metrics/10_data.json").read_bytes() == (tmp_path / "b/metrics/10_data.json").read_bytes()


@pytest.mark.parametrize("change, key", [({"test_fraction": 1.5}, "test_fraction"),
                                         ({"datasets": ["mnist", "svhn"]}, "datasets"),
                                         ({"source": "web"}, "source"), ({"n_images": 1}, "n_images"),
                                         ({"n_images": "many"}, "n_images")])
def test_bad_values_raise_config_errors_naming_the_key(smoke_params, change, key):
    with pytest.raises(ConfigError, match=key):
        stage.Config.from_params(smoke_params, **change)
