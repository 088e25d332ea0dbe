"""Shared fixtures: the smoke profile's parameters and the devices every stage's ``run`` is tested on."""
from __future__ import annotations

import contextlib

import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="session")
def smoke_params():
    """The full smoke-profile params dict (built from profiles/*.yaml; the user's params.yaml is never read)."""
    from afcore import params

    return params.build("smoke")


@pytest.fixture(params=DEVICES)
def stage_device(request):
    """Each device present on this machine: 'cpu' always, 'cuda' when a GPU is there."""
    return request.param


@pytest.fixture
def device_checks():
    """A context manager factory: ``with device_checks(device): stage.run(...)`` fails the test when the stage's
    own code mixes devices (see afcore.devcheck)."""
    from afcore import utils

    @contextlib.contextmanager
    def checks(device):
        with utils.DeviceGuard():
            yield

    return checks
