"""Data sets without network (afcore.data): shapes, ranges, determinism, MNIST-M construction, hub loader errors."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from afcore import data


def test_natural_images_are_rgb_unit_range():
    images = data.natural_images(("astronaut", "camera", "brick"))
    assert len(images) == 3
    for img in images:
        assert img.ndim == 3 and img.shape[-1] == 3
        assert img.min() >= 0.0 and img.max() <= 1.0
    with pytest.raises(ValueError, match="names"):
        data.natural_images(("no_such_photo",))


def test_random_crops_shape_range_and_seed():
    a = data.random_crops(8, 16, seed=3)
    b = data.random_crops(8, 16, seed=3)
    c = data.random_crops(8, 16, seed=4)
    assert a.shape == (8, 3, 16, 16) and a.dtype == torch.float32
    assert a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError):
        data.random_crops(0, 16)


def test_embedded_mnist_padded_to_32():
    x, y = data.mnist(n=50)
    assert x.shape == (50, 1, 32, 32) and y.shape == (50,)
    assert x.min() == -1 and x.max() <= 1
    # padding of 2 pixels on every side is background
    assert torch.all(x[..., :2, :] == -1) and torch.all(x[..., :, -2:] == -1)
    assert set(y.tolist()) <= set(range(10))
    with pytest.raises(ValueError, match="source"):
        data.mnist(source="internet")


def test_mnist_m_is_abs_difference_of_patch_and_digit():
    x, _ = data.mnist(n=6)
    m = data.mnist_m(x, seed=1)
    assert m.shape == (6, 3, 32, 32) and m.min() >= -1 and m.max() <= 1
    patches = (data.random_crops(6, 32, seed=1, scale_range=(0.1, 0.5)) + 1) / 2
    expected = (patches - (x + 1) / 2).abs() * 2 - 1
    assert torch.allclose(m, expected)
    # where the digit is background (0), MNIST-M is the patch itself; where it is ink (1), the inverted patch
    bg = (x == -1).expand_as(m)
    assert torch.allclose(m[bg], (patches * 2 - 1)[bg])
    assert torch.equal(m, data.mnist_m(x, seed=1))
    with pytest.raises(ValueError):
        data.mnist_m(torch.zeros(2, 3, 32, 32))


def test_split_is_a_seeded_partition():
    x = torch.arange(20.0).view(20, 1, 1, 1)
    y = torch.arange(20)
    parts = data.split(x, y, 0.25, seed=0)
    assert len(parts["test"]) == 5 and len(parts["train"]) == 15
    assert sorted(parts["train"].flatten().tolist() + parts["test"].flatten().tolist()) == list(range(20))
    assert torch.equal(parts["train"].flatten().long(), parts["train_labels"])
    with pytest.raises(ValueError, match="test_fraction"):
        data.split(x, y, 1.5, seed=0)


def test_checksum_and_load_prepared_errors(tmp_path):
    t = torch.ones(3, 2)
    assert data.checksum(t) == data.checksum(t.clone()) != data.checksum(t * 2)
    with pytest.raises(ValueError, match="dataset"):
        data.load_prepared("imagenet", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="data stage"):
        data.load_prepared("mnist", root=tmp_path)


def test_hub_loader_reads_a_local_saved_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(4, 28, 28), dtype=np.uint8)
    ds = datasets.Dataset.from_dict({"image": [im for im in imgs], "label": [0, 1, 2, 3]})
    ds.save_to_disk(str(tmp_path / "mnist_local"))
    images, labels = data._from_hub("mnist", "image", "label", path=str(tmp_path / "mnist_local"))
    assert images.shape == (4, 1, 28, 28) and labels.tolist() == [0, 1, 2, 3]
    assert torch.allclose(images[0, 0], torch.from_numpy(imgs[0]).float() / 255)


def test_hub_offline_gives_a_clear_message():
    code = ("from afcore import data\n"
            "try:\n    data.mnist(source='hub')\nexcept data.HubUnavailable as e:\n    print('MSG', e)\n")
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_HOME=os.devnull + "_none")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert "MSG" in out.stdout, out.stderr[-2000:]
    assert "source='embedded'" in out.stdout and "natural32" in out.stdout
    with pytest.raises(ValueError, match="natural32"):
        data.cifar10(source="embedded")


def test_small_mnist_subsets_hold_every_class():
    _, y = data.mnist(n=100)
    assert len(set(y.tolist())) == 10


def test_hub_images_reads_a_local_saved_image_set(tmp_path):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8))  # 40 wide, 30 high
    gray = Image.fromarray(rng.integers(0, 256, size=(20, 20), dtype=np.uint8))
    rgba = Image.fromarray(rng.integers(0, 256, size=(16, 24, 4), dtype=np.uint8))
    ds = datasets.Dataset.from_dict({"img": [rgb, gray, rgba]}, features=datasets.Features({"img": datasets.Image()}))
    ds.save_to_disk(str(tmp_path / "local"))
    x = data.hub_images("local-set", 16, image_key="img", path=str(tmp_path / "local"))
    assert x.shape == (3, 3, 16, 16) and x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    # centre square crop, then PIL bicubic resize
    expected = np.asarray(rgb.crop((5, 0, 35, 30)).resize((16, 16), Image.Resampling.BICUBIC), dtype=np.float32)
    assert torch.allclose(x[0], torch.from_numpy(expected / 255.0 * 2 - 1).permute(2, 0, 1), atol=1e-6)
    assert torch.equal(x[1, 0], x[1, 1]) and torch.equal(x[1, 0], x[1, 2])  # grayscale -> 3 equal channels
    # the folder can be the name itself; n takes the first n; a DatasetDict is read by split
    assert torch.equal(data.hub_images(str(tmp_path / "local"), 16, n=2, image_key="img"), x[:2])
    datasets.DatasetDict({"test": ds}).save_to_disk(str(tmp_path / "dd"))
    assert torch.equal(data.hub_images("dd", 16, split="test", image_key="img", path=str(tmp_path / "dd")), x)
    with pytest.raises(ValueError, match="split"):
        data.hub_images("dd", 16, image_key="img", path=str(tmp_path / "dd"))
    with pytest.raises(ValueError, match="image_key"):
        data.hub_images("local", 16, path=str(tmp_path / "local"))
    with pytest.raises(ValueError, match="n="):
        data.hub_images("local", 16, n=10, image_key="img", path=str(tmp_path / "local"))
    with pytest.raises(data.HubUnavailable, match="save_to_disk"):
        data.hub_images("local", 16, path=str(tmp_path / "missing"))


def test_hub_images_unavailable_name_gives_the_clear_error():
    code = ("from afcore import data\n"
            "try:\n    data.hub_images('afcore-test/no-such-images', 16, n=4)\n"
            "except data.HubUnavailable as e:\n    print('MSG', e)\n")
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_HOME=os.devnull + "_none")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert "MSG" in out.stdout, out.stderr[-2000:]
    assert "afcore-test/no-such-images" in out.stdout and "vae_dataset='natural'" in out.stdout


def test_lfw_faces_are_the_embedded_faces_resized():
    import skimage.data

    faces = data.lfw_faces(25, flips=True)
    raw = torch.from_numpy(skimage.data.lfw_subset().astype("float32"))
    assert faces.shape == (400, 3, 25, 25) and faces.min() >= -1 and faces.max() <= 1
    # at the native size the resize is the identity, and the second half mirrors the first
    assert torch.allclose((faces[:200, 0] + 1) / 2, raw, atol=1e-5)
    assert torch.equal(faces[200:], faces[:200].flip(-1))
    assert data.lfw_faces(32, flips=False).shape == (200, 3, 32, 32)
    with pytest.raises(ValueError, match="size"):
        data.lfw_faces(2)


def test_saved_tensors_are_byte_reproducible_and_readable_by_others(tmp_path):
    """Identical content gives identical bytes whatever the file is called (DVC sees no change on a re-run), and a
    written file gets the umask's mode, not a temporary file's private 0600."""
    from afcore.utils import save_torch

    parts = {"train": torch.arange(12.0).reshape(3, 4), "labels": torch.tensor([1, 2, 3])}
    a, b = save_torch(parts, tmp_path / "a.pt"), save_torch(parts, tmp_path / "sub" / "b.pt")
    assert a.read_bytes() == b.read_bytes()
    assert torch.equal(torch.load(a)["train"], parts["train"])
    mask = os.umask(0o022)
    try:
        c = save_torch(parts, tmp_path / "c.pt")
    finally:
        os.umask(mask)
    assert c.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_load_prepared_refuses_a_changed_or_damaged_file(tmp_path):
    """The data stage stores each split's sha256 beside it; a file edited afterwards, or truncated, is refused."""
    from afcore.utils import save_torch

    train, test = torch.rand(4, 1, 8, 8), torch.rand(2, 1, 8, 8)
    parts = {"train": train, "test": test, "name": "mnist",
             "sha256": {"train": data.checksum(train), "test": data.checksum(test)}}
    save_torch(parts, tmp_path / "mnist.pt")
    assert torch.equal(data.load_prepared("mnist", root=tmp_path)["train"], train)
    edited = dict(parts, train=train.clone().index_fill_(0, torch.tensor([0]), 0.5))
    save_torch(edited, tmp_path / "mnist.pt")
    with pytest.raises(ValueError, match="'train' split does not match"):
        data.load_prepared("mnist", root=tmp_path)
    (tmp_path / "mnist.pt").write_bytes((tmp_path / "mnist.pt").read_bytes()[:100])
    with pytest.raises(ValueError, match="cannot be read"):
        data.load_prepared("mnist", root=tmp_path)


def test_load_prepared_refuses_a_file_of_another_data_set(tmp_path):
    """A sound file of another data set renamed into place passes its own sha256, so the stored name is checked; a
    file without a name (an older data stage) is refused too, both naming the file and `dvc repro data`."""
    from afcore.utils import save_torch

    train, test = torch.rand(4, 3, 8, 8), torch.rand(2, 3, 8, 8)
    parts = {"train": train, "test": test, "name": "mnist_m",
             "sha256": {"train": data.checksum(train), "test": data.checksum(test)}}
    save_torch(parts, tmp_path / "mnist_m.pt")
    assert torch.equal(data.load_prepared("mnist_m", root=tmp_path)["test"], test)
    (tmp_path / "mnist_m.pt").rename(tmp_path / "mnist.pt")
    with pytest.raises(ValueError, match="holds the data set 'mnist_m', expected 'mnist'") as info:
        data.load_prepared("mnist", root=tmp_path)
    assert str(tmp_path / "mnist.pt") in str(info.value) and "dvc repro data" in str(info.value)
    save_torch({k: v for k, v in parts.items() if k != "name"}, tmp_path / "mnist.pt")
    with pytest.raises(ValueError, match="did not record the data set's name") as info:
        data.load_prepared("mnist", root=tmp_path)
    assert str(tmp_path / "mnist.pt") in str(info.value) and "dvc repro data" in str(info.value)
