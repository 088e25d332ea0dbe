"""Stage ``configs_train``: one (data set, config) run trains, writes its checkpoint and metrics, and resumes without
training again; the configs section has one Config, shared by the three configs stages."""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from afcore import config_unet
from afcore.stages import configs_eval, configs_report
from afcore.stages import configs_train as stage
from afcore.stages.common import ConfigError


def test_items_are_the_matrix_of_data_sets_and_configs(smoke_params):
    section = smoke_params["configs"]
    items = stage.ITEMS(smoke_params)
    assert items == [{"dataset": d, "config": c} for d in section["config_datasets"] for c in section["configs"]]
    assert configs_eval.ITEMS(smoke_params) == [{"dataset": d} for d in section["config_datasets"]]
    assert configs_eval.Config is stage.Config and configs_report.Config is stage.Config


def test_runs_write_checkpoints_and_metrics_and_resume_without_training(stage_device, device_checks, smoke_workspace,
                                                                      smoke_params, tmp_path):
    root = tmp_path  # a private workspace: these checkpoints must really train, whatever the shared one holds
    shutil.copytree(smoke_workspace("data") / "data", root / "data")
    out = {}
    for config in ("A", "D-1N"):
        cfg = stage.Config.from_params(smoke_params, dataset="mnist", config=config)
        with device_checks(stage_device):
            out[config] = stage.run(cfg, stage_device, root)
        summary = out[config]
        assert summary["device"].startswith(stage_device)
        assert json.loads((root / f"metrics/configs_train/mnist-{config}.json").read_text()) == summary
        loss_rows = (root / f"metrics/configs_train/mnist-{config}_loss.csv").read_text().split()
        assert loss_rows[0] == "step,seed,loss" and len(loss_rows) == 1 + cfg.train_steps * len(cfg.seeds)
        assert sorted({int(r.split(",")[1]) for r in loss_rows[1:]}) == cfg.seeds
        assert math.isfinite(summary["final_loss_mean_last_20pct"]) and summary["final_loss_mean_last_20pct"] > 0
        assert summary["train_seconds"] > 0 and summary["median_step_seconds"] > 0
        assert (root / f"figures/12_configs_train/mnist-{config}.png").stat().st_size > 0
        # one run per training seed, the base seed at the top level (where downstream stages look)
        assert len(cfg.seeds) >= 2 and [r["seed"] for r in summary["seeds"]] == cfg.seeds
        assert summary["seed"] == cfg.seed and summary["seeds"][0]["train_seconds"] == summary["train_seconds"]
        weights = []
        for seed in cfg.seeds:
            folder = "" if seed == cfg.seed else f"/seed{seed}"
            unet = config_unet.load_unet(root / f"checkpoints/configs/mnist/{config}{folder}/unet.pt")
            assert unet.config == config and unet.init_args["base"] == cfg.base_channels
            weights.append(torch.cat([p.flatten() for p in unet.parameters()]))
        assert not torch.equal(weights[0], weights[1])  # another seed trains another network
    # alias-free layers change fixed filters only: the same number of trainable parameters as Config A
    assert out["A"]["trainable_parameters"] == out["D-1N"]["trainable_parameters"]
    # a second run resumes the finished checkpoint: no step is trained again, so even the timings (summed from the
    # checkpointed per-step history) repeat exactly
    with device_checks(stage_device):
        again = stage.run(stage.Config.from_params(smoke_params, dataset="mnist", config="D-1N"), stage_device, root)
    assert again == out["D-1N"]


@pytest.mark.parametrize("change, key", [({"config": "E-3"}, "config"), ({"configs": ["A", "B-7"]}, "configs"),
                                         ({"dataset": "svhn"}, "dataset"), ({"ema_decay": 1.0}, "ema_decay"),
                                         ({"attention": "some"}, "attention"), ({"lr": -1.0}, "lr"),
                                         ({"quality_sampler": "euler"}, "quality_sampler"),
                                         ({"rotation_boundary": "wrap"}, "rotation_boundary"),
                                         ({"filter_method": "gaussian"}, "filter_method"),
                                         ({"levels": 0}, "levels"), ({"n_samples": 1}, "n_samples")])
def test_bad_values_raise_config_errors_naming_the_key(smoke_params, change, key):
    with pytest.raises(ConfigError, match=f"configs.{key}:"):
        stage.Config.from_params(smoke_params, **change)
