"""The workbook's Jupyter kernel: the environment's Python, started in the repository root.

    python -m workbook.kernel            # (make install) write the "python3" kernelspec into this environment

Jupyter starts a kernel in the folder of the notebook it runs, so a notebook opened from ``notebooks/`` (or a
student copy in ``student/``) would read and write ``notebooks/metrics/``, ``notebooks/figures/`` ... instead of the
workspace the pipeline uses. The kernel below first moves to the repository root when it was started in one of those
two folders of a workbook checkout (a folder whose parent holds ``dvc.yaml``); anywhere else (papermill runs the
stages with the root, or a test workspace, as the working directory) it stays where it was started. It also runs
quietly: ipykernel's warning that local TCP sockets are unencrypted is printed by every stage otherwise, and says
nothing about the workbook (the kernel listens on localhost only).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

NAME = "python3"  # papermill's and Lab's default kernel name: every tool picks this kernel without being told
DISPLAY_NAME = "Python 3 (alias-free workbook)"
FOLDERS = ("notebooks", "student")  # where notebooks live; their kernels run one level up

STARTUP = (
    "import os as _os, pathlib as _pl; _here = _pl.Path.cwd(); "
    f"_os.chdir(_here.parent) if _here.name in {FOLDERS!r} and (_here.parent / 'dvc.yaml').is_file() else None; "
    "del _os, _pl, _here"
)


def kernelspec(python: str = sys.executable) -> dict:
    """The kernel.json content: ipykernel with the start-up line above and warnings-only-if-errors logging."""
    return {
        "argv": [python, "-Xfrozen_modules=off", "-m", "ipykernel_launcher", "-f", "{connection_file}",
                 f"--IPKernelApp.exec_lines={json.dumps([STARTUP])}", "--IPKernelApp.log_level=ERROR"],
        "display_name": DISPLAY_NAME,
        "language": "python",
        "metadata": {"debugger": True},
        "kernel_protocol_version": "5.5",
    }


def install(prefix: str | Path = sys.prefix) -> Path:
    """Write ``<prefix>/share/jupyter/kernels/python3/kernel.json`` (the environment's own kernelspec)."""
    folder = Path(prefix) / "share" / "jupyter" / "kernels" / NAME
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "kernel.json"
    path.write_text(json.dumps(kernelspec(), indent=1) + "\n")
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m workbook.kernel", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prefix", default=sys.prefix, help="environment to install into (default: this one)")
    args = parser.parse_args(argv)
    print(f"kernelspec written to {install(args.prefix)}")


if __name__ == "__main__":
    main()
