"""A simulated accelerator for CPU machines: catch code that would mix devices on a GPU, without a GPU.

On a CPU-only machine every tensor lives on the CPU, so code that forgets a ``device=``, draws with a CPU generator
for a GPU tensor, or calls ``.numpy()`` on a device tensor passes every test and fails on the first GPU run.
``DeviceCheck`` tags each tensor as living on the *run device* or on the *host* and applies CUDA's rules to the
tags, while the arithmetic still runs on the CPU:

* ``pick_device`` resolves a CPU run to ``torch.device("cpu", 0)``, the simulated accelerator; a factory call
  (``torch.randn``, ``zeros``, ...) with that device, ``.to(it)`` and tensors derived from device tensors are
  *device*; a factory without ``device=`` or with plain ``device="cpu"`` (in any code: a library derives it from a
  tensor it was given, and a host tensor's ``.device`` reads ``cpu``), ``torch.from_numpy``, and ``.cpu()`` and
  ``.to("cpu")`` in the workbook's own code are *host* (a library that moves things to plain ``"cpu"``, as
  accelerate's ``prepare`` does, is moving them to the run device: on a GPU run it would have chosen ``cuda``);
* an op whose tensor arguments include both (a host scalar, a 0-dim tensor, is allowed, as on CUDA; so are host
  index tensors) raises ``DeviceMixError``; so do a host generator drawing device tensors (and the reverse) and
  ``.numpy()`` of a device tensor;
* ``tensor.device`` of a device tensor reads ``cpu:0``, so ``device=x.device`` keeps working.

The stage tests run every stage's ``run`` inside it (``tests/conftest.py``: ``device_checks``).
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

SIMULATED = torch.device("cpu", 0)
_OURS = str(Path(__file__).resolve().parent)
_SELF = str(Path(__file__).resolve())
_GUARD = str(Path(__file__).resolve().parent / "device.py")  # afcore.device.DeviceGuard only passes calls on
_TAG = "_afcore_on_device"
_INDEXING = {"__getitem__", "__setitem__", "index_select", "gather", "index_put_", "index_put", "take"}
_METADATA = {"_has_compatible_shallow_copy_type", "is_same_size", "dim", "size", "numel", "element_size",
             "is_floating_point", "is_complex", "data_ptr", "stride", "is_contiguous", "__len__", "__repr__",
             "__format__", "__str__", "__hash__", "__bool__", "requires_grad_", "register_hook", "untyped_storage",
             "_is_view", "__reduce_ex__", "__deepcopy__", "storage_offset", "__array__"}
_active: list["DeviceCheck"] = []


class DeviceMixError(RuntimeError):
    """Code would mix the run device and the host on a GPU."""


def active() -> bool:
    return bool(_active)


def _caller_is_ours() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if name == _SELF or "/torch/" in name or (name == _GUARD and frame.f_code.co_name == "__torch_function__"):
            frame = frame.f_back
            continue
        roots = _active[-1].roots if _active else (_OURS,)
        return name.startswith(roots) or "ipykernel_" in name or name.startswith("<ipython-input")
    return False


def _device_tag(device, ours: bool) -> bool:
    """True for the run device, False for the host. ``ours``: the workbook's code, or a factory call (whose
    ``device=`` a library derives from a tensor it was given, ``x.device``, which reads ``cpu:0`` on the device)."""
    device = torch.device(device) if isinstance(device, (str, int)) else device
    if device.type != "cpu":
        return True  # a real accelerator (the check also runs on GPU machines)
    if device.index == 0:
        return True
    return not ours  # a library that moves to plain "cpu" (accelerate's prepare) was set up for the run device


def _tag(t: torch.Tensor):
    return t.__dict__.get(_TAG, False) if isinstance(t, torch.Tensor) else None


def _set(t, on_device: bool):
    if isinstance(t, torch.Tensor):
        t.__dict__[_TAG] = on_device
    return t


class _TaggedGenerator(torch.Generator):
    def __init__(self, device="cpu"):  # torch.Generator builds itself in __new__
        self.on_device = _device_tag(device, _caller_is_ours())

    @property
    def device(self):
        real = torch._C.Generator.device.__get__(self)
        return SIMULATED if self.on_device and real.type == "cpu" else real


class DeviceCheck(TorchFunctionMode):
    """Apply CUDA's device rules to tagged CPU tensors (see the module docstring). ``roots``: folders (or files)
    whose code counts as the workbook's own (default: ``afcore/``; notebook cells always count)."""

    def __init__(self, roots=()):
        super().__init__()
        self.roots = (_OURS, *(str(r) for r in roots))

    def __enter__(self):
        self._generator = torch.Generator
        torch.Generator = _TaggedGenerator
        _active.append(self)
        return super().__enter__()

    def __exit__(self, *exc):
        _active.remove(self)
        torch.Generator = self._generator
        return super().__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in ("__get__", "__set__"):
            return self._attribute(func, name, args)
        if name in _METADATA:
            return func(*args, **kwargs)
        if name == "copy_":  # copying between devices is legal (load_state_dict does it): dst stays where it is
            return func(*args, **kwargs)
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if name in ("to", "cuda", "cpu"):
            return self._move(func, name, args, kwargs)
        if name == "numpy" and _tag(args[0]):
            raise DeviceMixError("tensor.numpy() of a tensor on the run device: call .cpu() first")
        checked = tensors[1:] if name in _INDEXING else tensors
        if name in _INDEXING:
            checked = [t for t in tensors[1:] if t.dtype.is_floating_point or t.dtype.is_complex]
            checked = [tensors[0]] + checked if tensors else checked
        tags = {_tag(t) for t in checked if t.ndim > 0}
        if len(tags) > 1:
            shapes = [(tuple(t.shape), "device" if _tag(t) else "host") for t in checked if t.ndim > 0]
            raise DeviceMixError(f"{name or func}: tensors on the run device and on the host {shapes}")
        if "device" in kwargs and kwargs["device"] is not None:
            out_tag = _device_tag(kwargs["device"], ours=True)
        elif tensors:
            out_tag = any(_tag(t) for t in tensors)
        else:
            out_tag = False  # a factory without device=: the default device, the host
        generator = kwargs.get("generator")
        if isinstance(generator, _TaggedGenerator) and generator.on_device != out_tag:
            raise DeviceMixError(f"{name}: a generator on the {'run device' if generator.on_device else 'host'} "
                                 f"draws a tensor on the {'run device' if out_tag else 'host'}")
        out = func(*args, **kwargs)
        for t in tree_flatten(out)[0]:
            _set(t, out_tag)
        return out

    @staticmethod
    def _attribute(func, name, args):
        descriptor = getattr(func, "__self__", None)
        if name == "__set__":
            out = func(*args)
            if descriptor is torch.Tensor.data and isinstance(args[1], torch.Tensor):
                _set(args[0], _tag(args[1]))  # p.data = t moves p where t is
            return out
        out = func(*args)
        if descriptor is torch.Tensor.device:
            return SIMULATED if out.type == "cpu" and _tag(args[0]) else out
        if isinstance(out, torch.Tensor) and _TAG not in out.__dict__:
            _set(out, _tag(args[0]))  # .data, .grad, .T, .real ... live where their tensor does
        return out

    def _move(self, func, name, args, kwargs):
        src = args[0]
        if name == "cpu":
            target = not _caller_is_ours()
        elif name == "cuda":
            target = True
        else:
            target = None
            for a in list(args[1:]) + [kwargs.get("device"), kwargs.get("other")]:
                if isinstance(a, torch.Tensor):
                    target = _tag(a)
                elif isinstance(a, (torch.device, str)) and not isinstance(a, torch.dtype):
                    try:
                        target = _device_tag(a, _caller_is_ours())
                    except RuntimeError:
                        continue
                if target is not None:
                    break
            if target is None:
                target = _tag(src)
        out = func(*args, **kwargs)
        if out is src and _tag(src) != target and not isinstance(src, torch.nn.Parameter):
            out = out.view_as(out)  # a real move makes a new tensor: leave the source's tag alone
        return _set(out, target)


@contextlib.contextmanager
def device_check(roots=()):
    """``with device_check(): stage.run(cfg, "cpu", out)`` runs the stage on the simulated accelerator."""
    with DeviceCheck(roots):
        yield
