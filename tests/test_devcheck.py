"""afcore.devcheck: the simulated accelerator catches, on a CPU machine, the device mixes a GPU would reject."""
from __future__ import annotations

import pytest
import torch

from afcore import course, devcheck, ldm, utils
from afcore import device as device_mod
from afcore.devcheck import DeviceMixError

HERE = (__file__,)


def test_the_rules_of_the_simulated_device():
    with devcheck.DeviceCheck(roots=HERE):
        dev = device_mod.pick_device("cpu")
        assert dev == devcheck.SIMULATED
        x = torch.randn(3, 4, device=dev)
        assert x.device == dev  # so that device=x.device keeps things on the run device
        y = x + torch.zeros(3, 4, device=x.device)
        assert y.device == dev
        assert (x * torch.tensor(2.0)).device == dev  # a host scalar (0-dim) may meet a device tensor, as on CUDA
        assert x[torch.tensor([0, 2])].shape == (2, 4)  # so may a host index tensor
        with pytest.raises(DeviceMixError, match="run device and on the host"):
            x + torch.ones(3, 4)  # a factory without device= makes a host tensor
        with pytest.raises(DeviceMixError, match="run device and on the host"):
            x + torch.ones(3, 4, device="cpu")  # so does our code naming the plain CPU
        with pytest.raises(DeviceMixError, match="numpy"):
            x.numpy()
        assert x.cpu().numpy().shape == (3, 4) and x.device == dev  # a copy to the host leaves x where it was
        with pytest.raises(DeviceMixError, match="generator on the host"):
            torch.randint(0, 3, (2,), generator=torch.Generator().manual_seed(0), device=dev)
        g = device_mod.make_generator(0, dev)
        assert torch.randint(0, 3, (2,), generator=g, device=dev).device == dev
        with pytest.raises(DeviceMixError):
            torch.nn.Linear(4, 2)(x)  # a model that was never moved
        assert torch.nn.Linear(4, 2).to(dev)(x).device == dev


def test_outside_the_check_nothing_changes():
    assert device_mod.pick_device("cpu") == torch.device("cpu")
    x = torch.randn(2)
    assert x.device == torch.device("cpu") and torch.Generator is torch._C.Generator


def test_a_short_training_and_sampling_run_is_clean(tmp_path):
    """No false alarms on the code every stage uses: accelerate's loop, EMA, a diffusers U-Net and scheduler."""
    from afcore.train import batch_sampler, train_loop

    with devcheck.DeviceCheck(roots=HERE):
        dev = device_mod.pick_device("cpu")
        unet = ldm.latent_unet(channels=(8, 16), latent_channels=4, sample_size=8, groups=4).to(dev)
        sched = ldm.make_scheduler("ddim")
        z = torch.randn(6, 4, 8, 8, device=dev)
        get_batch = batch_sampler(z, batch_size=2, seed=0, device=dev)

        def loss_fn(m, batch, step):
            return ldm.ldm_loss(m, batch[0], sched, device_mod.make_generator(batch[1], dev), eq_weight=1.0)

        model, ema, history = train_loop(unet, loss_fn, get_batch, steps=2, lr=1e-3, ckpt_dir=tmp_path,
                                         ema_decay=0.9, device=dev, resume=False)
        out = ldm.sample(ema, torch.randn(1, 4, 8, 8, device=dev), steps=2)
        assert out.device == dev and len(history) == 2


def test_a_host_generator_for_the_diffusion_loss_is_caught():
    """Notebook 41 passed a CPU generator to ldm_loss, whose draws are on the model's device: a GPU rejects it."""
    with devcheck.DeviceCheck(roots=HERE):
        dev = device_mod.pick_device("cpu")
        unet = ldm.latent_unet(channels=(8, 16), latent_channels=4, sample_size=8, groups=4).to(dev)
        z = torch.randn(2, 4, 8, 8, device=dev)
        with pytest.raises((DeviceMixError, ValueError), match="generator"):
            ldm.ldm_loss(unet, z, ldm.make_scheduler("ddim"), torch.Generator().manual_seed(0))


def test_the_rotation_metric_builds_its_mask_on_the_input_device():
    """course.rotation_psnr (notebook 04) made its circular mask on the CPU: on a GPU, x * mask fails."""
    with devcheck.DeviceCheck(roots=HERE):
        dev = device_mod.pick_device("cpu")
        x = torch.randn(1, 1, 16, 16, device=dev)
        assert course.rotation_psnr(lambda t: t, x, 30.0) > 100.0


def test_copying_between_device_and_host_is_allowed():
    """copy_ across devices is legal on CUDA (load_state_dict into a host model does it): no alarm, and the
    destination stays where it was."""
    with devcheck.DeviceCheck(roots=HERE):
        dev = device_mod.pick_device("cpu")
        host = torch.nn.Linear(2, 2)
        host.load_state_dict({k: v.to(dev) for k, v in torch.nn.Linear(2, 2).state_dict().items()})
        with pytest.raises(DeviceMixError):
            host(torch.randn(1, 2, device=dev))


def test_a_library_placing_its_tensors_where_its_input_is_follows_the_input():
    """torchmetrics builds SSIM's kernel with ``device=preds.device``: host inputs give a host kernel (no alarm),
    device inputs a device kernel; mixing the two inputs is still caught."""
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    with devcheck.DeviceCheck(roots=HERE):
        dev = device_mod.pick_device("cpu")
        host = torch.rand(2, 3, 16, 16)
        on_device = torch.rand(2, 3, 16, 16, device=dev)
        assert 0.99 < float(ssim(host, host, data_range=1.0)) <= 1.0 + 1e-6
        assert 0.99 < float(ssim(on_device, on_device, data_range=1.0)) <= 1.0 + 1e-6
        with pytest.raises(DeviceMixError):
            ssim(on_device, host, data_range=1.0)
