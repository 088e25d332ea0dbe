"""Run one notebook as a pipeline stage: jupytext piped into papermill, with parameter checks and an atomic output.

    python -m workbook.run notebooks/01_filters.py --params base,filters
    python -m workbook.run notebooks/12_configs_train.py --params base,configs --set dataset=mnist config=A \
        --output reports/12_configs_train/mnist-A.ipynb        (one member of a foreach/matrix stage)

1. validates ``params.yaml`` (unknown keys or wrong types stop the stage with the key's name);
2. collects the named sections (``section`` or ``section.key``) as notebook parameters, adds the ``--set name=value``
   pairs (values parsed as YAML: the item of a DVC foreach/matrix stage), and checks that each name exists in the
   notebook's single ``parameters`` cell (papermill itself would only warn);
3. ``jupytext --to ipynb --set-kernel python3`` piped into ``papermill -k python3 --cwd <repo root>``;
4. writes ``reports/<notebook>.ipynb`` through a temporary file, so a failed run leaves no half-written report.
"""
from __future__ import annotations

import argparse
import ast
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from workbook import params as params_mod
from afcore.utils import REPO_ROOT, _atomic_write

_CELL = re.compile(r"^# %%(.*)$", re.M)


def parameters_cell(notebook: str | Path) -> str:
    """Source of the notebook's one cell tagged ``parameters`` (py:percent format)."""
    text = Path(notebook).read_text()
    marks = list(_CELL.finditer(text))
    cells = []
    for i, m in enumerate(marks):
        if 'tags=["parameters"]' in m.group(1).replace(" ", "").replace("'", '"'):
            end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
            cells.append(text[m.end():end])
    if len(cells) != 1:
        raise ValueError(f"{notebook}: expected exactly one cell tagged parameters, found {len(cells)}")
    return cells[0]


def parameter_names(notebook: str | Path) -> dict:
    """Names assigned in the parameters cell, with their literal default values."""
    tree = ast.parse(parameters_cell(notebook))
    names = {}
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        for t in targets:
            if isinstance(t, ast.Name):
                try:
                    names[t.id] = ast.literal_eval(node.value)
                except ValueError as exc:
                    raise ValueError(f"{notebook}: parameter {t.id} must be a literal ({exc})") from None
    return names


def stage_parameters(spec: str, params: dict) -> dict:
    """Flatten 'base,filters' or 'base.seed,filters.numtaps' into papermill parameters."""
    out = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        section, _, key = item.partition(".")
        if section not in params:
            raise params_mod.ParamsError(f"--params {item}: unknown section; allowed: {sorted(params)}")
        if key:
            if key not in params[section]:
                raise params_mod.ParamsError(f"--params {item}: unknown key; allowed: {sorted(params[section])}")
            out[key] = params[section][key]
        else:
            out.update(params[section])
    return out


def set_parameters(pairs) -> dict:
    """``["dataset=mnist", "config=D-1N"]`` -> ``{"dataset": "mnist", "config": "D-1N"}`` (values parsed as YAML)."""
    out = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name.isidentifier():
            raise params_mod.ParamsError(f"--set {pair!r}: expected NAME=VALUE with NAME a notebook parameter")
        parsed = yaml.safe_load(value)
        out[name] = value if parsed is None else parsed
    return out


class TeachingClaimError(RuntimeError):
    """A notebook's "what to notice" assertion failed for the given parameters."""


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def failed_claim(executed: str | Path) -> str | None:
    """The failing ``assert`` line of an executed notebook whose run stopped on an AssertionError, else None."""
    import nbformat

    try:
        nb = nbformat.read(executed, as_version=4)
    except Exception:  # papermill stopped before writing a notebook
        return None
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") != "error":
                continue
            if out.get("ename") != "AssertionError":
                return None
            lines = [_ANSI.sub("", line) for tb in out.get("traceback", []) for line in tb.splitlines()]
            marked = [line.split("---->", 1)[1] for line in lines if "---->" in line]
            text = re.sub(r"^\s*\d+\s*", "", marked[-1]).strip() if marked else "assert ..."
            return f"{text}  ({out.get('evalue') or 'no message'})" if out.get("evalue") else text
    return None


def run_notebook(notebook: str | Path, parameters: dict, output: str | Path, cwd: Path = REPO_ROOT) -> Path:
    notebook, output = Path(notebook), Path(output)
    declared = parameter_names(notebook)
    unknown = sorted(set(parameters) - set(declared))
    if unknown:
        raise params_mod.ParamsError(
            f"{notebook}: parameters {unknown} are passed but not declared in its parameters cell "
            f"(declared: {sorted(declared)})"
        )
    pfd, pfile = tempfile.mkstemp(suffix=".yaml")
    os.close(pfd)
    Path(pfile).write_text(yaml.safe_dump(parameters))
    bindir = Path(sys.executable).parent

    def execute_into(tmp):
        convert = subprocess.Popen(
            [str(bindir / "jupytext"), "--to", "ipynb", "--set-kernel", "python3", "--output", "-", str(notebook)],
            stdout=subprocess.PIPE,
        )
        execute = subprocess.run(
            [str(bindir / "papermill"), "-", tmp, "-k", "python3", "--cwd", str(cwd), "-f", pfile,
             "--log-output", "--no-progress-bar"],
            stdin=convert.stdout,
        )
        convert.stdout.close()
        if convert.wait() != 0:
            raise RuntimeError(f"jupytext could not convert {notebook}")
        if execute.returncode != 0:
            claim = failed_claim(tmp)
            if claim is not None:
                raise TeachingClaimError(
                    f"{notebook}: a teaching claim failed, not a parameter check. The assertion below checks that the "
                    f"text's 'what to notice' holds for the computed numbers; with the parameters {parameters} they no "
                    f"longer support it (the values were accepted: the notebook's prose describes other values).\n"
                    f"    {claim}")
            raise RuntimeError(f"papermill failed on {notebook} (see the cell error above)")

    try:  # papermill goes by the extension, so the temporary report ends in .ipynb too
        _atomic_write(output, execute_into, suffix=".ipynb")
    finally:
        os.remove(pfile)
    return output


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m workbook.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebook")
    parser.add_argument("--params", default="base", help="comma-separated sections or section.key names")
    parser.add_argument("--set", nargs="*", action="extend", default=[], metavar="NAME=VALUE",
                        help="extra notebook parameters (a foreach/matrix item), values parsed as YAML")
    parser.add_argument("--output", default=None, help="default: reports/<notebook name>.ipynb")
    args = parser.parse_args(argv)
    params = params_mod.load()
    parameters = stage_parameters(args.params, params)
    parameters.update(set_parameters(args.set))
    output = args.output or REPO_ROOT / "reports" / (Path(args.notebook).stem + ".ipynb")
    path = run_notebook(args.notebook, parameters, output)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
