"""Fault test: each kind of input a stage reads is corrupted, truncated and swapped with another of its kind once;
loading must raise a clear error naming the file (or parameter), never a raw pickle / decoder error and never
succeed silently."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from afcore import data as afdata
from afcore.utils import save_torch


def _damage(path, how: str) -> None:
    raw = path.read_bytes()
    if how == "corrupt":  # same length, bytes in the middle overwritten
        mid = len(raw) // 2
        path.write_bytes(raw[:mid] + bytes(64) + raw[mid + 64:])
    else:  # truncated: a half-written file
        path.write_bytes(raw[:len(raw) // 2])


def _prepared(root, name, channels):
    train, test = torch.rand(4, channels, 8, 8), torch.rand(2, channels, 8, 8)
    save_torch({"train": train, "test": test, "name": name,
                "sha256": {"train": afdata.checksum(train), "test": afdata.checksum(test)}}, root / f"{name}.pt")


@pytest.mark.parametrize("how", ["corrupt", "truncate", "swap"])
def test_prepared_data_faults(tmp_path, how):
    _prepared(tmp_path, "mnist", 1)
    _prepared(tmp_path, "mnist_m", 3)
    path = tmp_path / "mnist.pt"
    if how == "swap":
        path.write_bytes((tmp_path / "mnist_m.pt").read_bytes())
    else:
        _damage(path, how)
    with pytest.raises(ValueError) as info:
        afdata.load_prepared("mnist", root=tmp_path)
    assert str(path) in str(info.value) and "dvc repro data" in str(info.value)


@pytest.mark.parametrize("how", ["corrupt", "truncate", "swap"])
def test_clip_folder_faults(tmp_path, how):
    import imageio.v2 as imageio

    from afcore import flow

    rng = np.random.default_rng(0)
    clip = tmp_path / "clip"
    clip.mkdir()
    for j in range(3):
        imageio.imwrite(clip / f"{j:03d}.png", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    assert flow.read_video(str(clip)).shape == (3, 3, 16, 16)
    frame = clip / "001.png"
    if how == "swap":  # a frame of another clip
        imageio.imwrite(frame, rng.integers(0, 256, (12, 20, 3), dtype=np.uint8))
    else:
        _damage(frame, how)
    with pytest.raises(ValueError, match="frame 001.png"):
        flow.read_video(str(clip))


@pytest.mark.parametrize("how", ["corrupt", "truncate"])
def test_gif_clip_faults(tmp_path, how):
    from afcore import flow
    from afcore.utils import save_gif

    rng = np.random.default_rng(0)
    save_gif([rng.random((16, 16, 3)) for _ in range(4)], tmp_path / "clip.gif")
    _damage(tmp_path / "clip.gif", how)
    with pytest.raises(ValueError, match="clip.gif"):
        flow.read_video(str(tmp_path / "clip.gif"))


@pytest.mark.parametrize("how", ["corrupt", "truncate", "swap"])
def test_params_yaml_faults(tmp_path, how):
    from workbook import params

    path = tmp_path / "params.yaml"
    params.use("smoke", path=path)
    assert params.load(path)["base"]
    if how == "swap":  # another YAML file of the project: a profile file
        path.write_text((params.REPO_ROOT / "profiles" / "base.yaml").read_text())
    elif how == "corrupt":
        path.write_text(path.read_text().replace(":", " [", 3))
    else:
        _damage(path, how)
    with pytest.raises(params.ParamsError) as info:
        params.load(path)
    assert str(path) in str(info.value) or "base" in str(info.value)


@pytest.mark.parametrize("how", ["corrupt", "truncate"])
def test_classifier_checkpoint_faults(tmp_path, how):
    from afcore import evaluation

    path = tmp_path / "mnist.pt"
    evaluation.save_classifier(evaluation.DigitClassifier(1), path)
    _damage(path, how)
    with pytest.raises(ValueError, match=str(path)):
        evaluation.load_classifier(path)


@pytest.mark.parametrize("how", ["corrupt", "truncate"])
def test_unet_checkpoint_faults(tmp_path, how):
    from afcore import config_unet

    path = tmp_path / "unet.pt"
    config_unet.save_unet(config_unet.ConfigUNet(levels=1), path)
    _damage(path, how)
    with pytest.raises(ValueError, match=str(path)):
        config_unet.load_unet(path)


def test_unreachable_hub_vae_message_reads_as_a_sentence(monkeypatch):
    import diffusers

    from afcore import vae

    def unreachable(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(diffusers.AutoencoderKL, "from_pretrained", unreachable)
    for local, where in ((False, "could not be downloaded"), (True, "are not in the local Hugging Face cache")):
        with pytest.raises(RuntimeError) as info:
            vae.load_pretrained_vae("afcore-test/no-such-vae", local_files_only=local)
        assert f"the weights of hub id 'afcore-test/no-such-vae' {where} (OSError: no network)" in str(info.value)


@pytest.mark.parametrize("how", ["corrupt", "truncate"])
def test_alias_free_folder_faults(tmp_path, how):
    from diffusers import UNet2DModel

    from afcore import surgery

    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=8, layers_per_block=1)
    surgery.make_alias_free(unet, resample=True, nonlinearity=False)
    surgery.save_alias_free(unet, tmp_path / "unet")
    patch = tmp_path / "unet" / surgery.PATCH_FILE
    weights = next(p for p in (tmp_path / "unet").iterdir() if p.suffix in (".safetensors", ".bin"))
    _damage(patch, how)
    with pytest.raises(ValueError, match=surgery.PATCH_FILE):
        surgery.load_alias_free(UNet2DModel, tmp_path / "unet")
    patch.unlink()
    _damage(weights, "truncate")
    with pytest.raises(ValueError, match="cannot be loaded as a UNet2DModel"):
        surgery.load_alias_free(UNet2DModel, tmp_path / "unet")
