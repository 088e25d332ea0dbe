"""Shared fixtures: the smoke profile's parameters, the devices every stage's ``run`` is tested on, and a smoke
workspace in which upstream stages have run (by function, on the CPU, once per test session)."""
from __future__ import annotations

import contextlib
import importlib
import os
import shutil
from pathlib import Path

import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# stage -> the stages whose outputs it reads (the DVC graph, at the granularity of stage modules)
UPSTREAM = {
    "data": [],
    "classifier": ["data"],
    "configs_train": ["data"],
    "configs_eval": ["configs_train", "classifier"],
    "configs_report": ["configs_eval"],
    "af_vae": [],
    "af_ldm": ["af_vae", "classifier"],
    "noise_warping": ["af_vae"],
    "video_editing": ["af_ldm"],
    "latent_sr": ["af_ldm"],
    "normals": ["af_vae", "data"],
}


@pytest.fixture(scope="session")
def smoke_params():
    """The full smoke-profile params dict (built from profiles/*.yaml; the user's params.yaml is never read)."""
    from workbook import params

    return params.build("smoke")


@pytest.fixture(params=DEVICES)
def stage_device(request):
    """Each device present on this machine: 'cpu' always, 'cuda' when a GPU is there."""
    return request.param


@pytest.fixture
def device_checks():
    """A context manager factory: ``with device_checks(device): stage.run(...)`` fails the test when the stage's
    own code creates a tensor without naming its device (afcore.device.DeviceGuard) or would mix the run device and the
    host on a GPU (afcore.devcheck: on a CPU machine the run is a simulated accelerator)."""
    from afcore import devcheck
    from afcore import device as device_mod

    @contextlib.contextmanager
    def checks(device):
        with devcheck.DeviceCheck(), device_mod.DeviceGuard():
            yield

    return checks


def run_stage(name: str, params: dict, device: str, root: Path, **overrides) -> dict:
    """``afcore.stages.<name>.run`` on the smoke config; a matrix/foreach stage's module may define
    ``ITEMS(params) -> list of override dicts`` and is then run once per item."""
    module = importlib.import_module(f"afcore.stages.{name}")
    items = module.ITEMS(params) if hasattr(module, "ITEMS") and not overrides else [overrides]
    out = {}
    for item in items:
        cfg = module.Config.from_params(params, **item)
        out[tuple(sorted(item.items()))] = module.run(cfg, device, root)
    return out if len(items) > 1 else next(iter(out.values()))


@pytest.fixture(scope="session")
def smoke_workspace(tmp_path_factory, smoke_params):
    """``ensure(*stages)`` -> a session-wide workspace folder in which those stages and everything upstream of them
    have run (on the CPU, smoke profile), each once. Set ``AFCORE_TEST_ARTIFACTS`` to a folder holding a finished
    smoke run's outputs (data/, checkpoints/, metrics/) to copy them instead of running upstream stages."""
    root = tmp_path_factory.mktemp("workspace")
    done: set[str] = set()
    cached = os.environ.get("AFCORE_TEST_ARTIFACTS")
    if cached:
        for sub in ("data", "checkpoints", "metrics"):
            if (Path(cached) / sub).exists():
                shutil.copytree(Path(cached) / sub, root / sub, dirs_exist_ok=True)

    def ensure(*stages: str) -> Path:
        for name in stages:
            if name in done:
                continue
            if cached:
                done.add(name)
                continue
            ensure(*UPSTREAM[name])
            run_stage(name, smoke_params, "cpu", root)
            done.add(name)
        return root

    return ensure


@pytest.fixture(scope="module")
def cached_stage_run(smoke_workspace, smoke_params):
    """``get(module, checkpoints, device, checks) -> (cfg, root, metrics)``: one smoke run of a stage module per device,
    shared by the tests of a module; the stage's own ``checkpoints`` folder is removed first so that every device
    really trains."""
    runs = {}

    def get(module, checkpoints, device, checks):
        name = module.__name__.rsplit(".", 1)[-1]
        if (name, device) not in runs:
            root = smoke_workspace(*UPSTREAM[name])
            shutil.rmtree(root / checkpoints, ignore_errors=True)
            cfg = module.Config.from_params(smoke_params)
            with checks(device):
                runs[name, device] = (cfg, root, module.run(cfg, device, root))
        return runs[name, device]

    return get
