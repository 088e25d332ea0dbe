"""Device handling: `base.device` values, clear errors for a device that is not there, and the guard that makes a
forgotten `device=` visible on a CPU-only machine."""
import pytest
import torch

from afcore import config_unet, ddpm, evaluation, metrics, utils
from afcore import device as device_mod
from workbook import params

torch.set_num_threads(1)


def test_pick_device_accepts_the_documented_values_and_names_the_parameter_otherwise():
    assert device_mod.pick_device("cpu") == torch.device("cpu")
    assert device_mod.pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("gpu", "cuda:x", "", None):
        with pytest.raises(ValueError, match="base.device"):
            device_mod.pick_device(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_asking_for_cuda_without_a_gpu_fails_instead_of_falling_back():
    for dev in ("cuda", "cuda:0", "cuda:3"):
        with pytest.raises(ValueError, match="no CUDA device"):
            device_mod.pick_device(dev)
    from afcore.train import train_loop
    with pytest.raises(ValueError, match="CUDA"):
        train_loop(torch.nn.Linear(1, 1), None, None, steps=1, lr=1e-3, ckpt_dir="unused", device="cuda")


def test_params_validation_rejects_an_unknown_device():
    built = params.build("cpu")
    built["base"]["device"] = "tpu"
    with pytest.raises(params.ParamsError, match="base.device"):
        params.validate(built)


def test_the_guard_flags_a_factory_call_without_a_device_in_our_code(tmp_path):
    with device_mod.DeviceGuard(roots=(__file__,)):
        torch.randn(3, device="cpu")
        torch.zeros_like(torch.ones(2, device="cpu"))  # *_like keeps its input's device: allowed
        with pytest.raises(device_mod.DeviceGuardError, match="torch.randn"):
            torch.randn(3)
        with pytest.raises(device_mod.DeviceGuardError, match="torch.arange"):
            torch.arange(4)


def test_hot_paths_name_their_device(tmp_path):
    """DDPM loss and sampling, quality metrics and SPSNR run under the guard (a forgotten device= fails here)."""
    dev = torch.device("cpu")
    with device_mod.DeviceGuard():
        model = config_unet.ConfigUNet("D-1N", base=8, levels=1)
        x0 = torch.zeros(2, 1, 32, 32, device=dev)
        ddpm.ddpm_loss(model, x0, ddpm.make_scheduler(), device_mod.make_generator(0, dev)).backward()
        z = torch.randn(2, 1, 32, 32, generator=device_mod.make_generator(1, dev), device=dev)
        with torch.no_grad():
            ddpm.sample(model, z, steps=2)
            ddpm.sample(model, z, steps=2, kind="ddpm", generator=device_mod.make_generator(2, dev))
            metrics.spsnr(lambda v: model(v, torch.full((2,), 10, device=dev)), z, (0.0, 0.5), per_sample=True)
        clf = evaluation.random_features(1, seed=0, calibrate=z)
        evaluation.quality_metrics(z, z + 0.1, clf, "t", kid_subset=2, device=dev)


def test_a_generator_on_another_device_is_refused():
    x0 = torch.zeros(2, 1, 32, 32, device="meta")
    with pytest.raises(ValueError, match="generator"):
        ddpm.ddpm_loss(None, x0, ddpm.make_scheduler(), torch.Generator().manual_seed(0))


def test_configure_backends_follows_base_deterministic():
    """base.deterministic: true pins cuDNN (deterministic, no autotuning); the gpu profile's false lets it autotune."""
    from afcore import device as D

    before = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    try:
        D.configure_backends(torch.device("cpu"), deterministic=False)
        assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
        D.configure_backends(torch.device("cpu"), deterministic=True)
        assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
        assert params.build("gpu")["base"]["deterministic"] is False
        assert params.build("cpu")["base"]["deterministic"] is True
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before


def test_resolving_a_device_changes_no_global_state():
    from afcore import device as D

    before = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic, torch.get_num_threads())
    torch.backends.cudnn.benchmark = not before[0]
    try:
        assert D.resolve_device("cpu") == torch.device("cpu")
        assert torch.backends.cudnn.benchmark == (not before[0])
    finally:
        torch.backends.cudnn.benchmark = before[0]
