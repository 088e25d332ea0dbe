"""Each DVC stage's code dependencies, derived from what its code imports, so that they cannot drift.

A stage's entry is the notebook it runs (``python -m workbook.run notebooks/X.py ...``) or the module it runs
(``python -m workbook.bench ...``). Its code dependencies are that entry plus every ``afcore`` (and ``workbook``) module in the entry's
import closure (imports inside functions included, package ``__init__`` files included), plus the C++ source of the
compiled kernel when ``afcore.cpu_kernel`` is in the closure. Data, checkpoint and metrics dependencies in dvc.yaml
are left as they are.

    python -m workbook.deps check    # exit 1 and list the differences when dvc.yaml disagrees with the imports
    python -m workbook.deps write    # rewrite the code dependencies in dvc.yaml (comments and order kept)
"""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

from afcore.utils import REPO_ROOT

PACKAGES = ("afcore", "workbook")  # the code whose changes re-run a stage
EXTRA_SOURCES = {"afcore/cpu_kernel.py": ["afcore/csrc/filtered_act.cpp"]}  # files a module reads at run time


def _module_file(dotted: str, root: Path) -> Path | None:
    """The file of an importable dotted name under ``root``: a module ``a/b.py`` or a package ``a/b/__init__.py``."""
    base = root.joinpath(*dotted.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def imported_modules(source: str, filename: str = "<source>") -> set[str]:
    """Dotted names of the ``afcore`` and ``workbook`` modules a source imports anywhere (top level or inside functions).

    ``from afcore import x`` counts ``afcore.x`` when that is a module (else the package ``afcore`` itself);
    ``import afcore.x.y`` counts ``afcore.x.y``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.split(".")[0] in PACKAGES)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] in PACKAGES:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _notebook_code(path: Path) -> str:
    """A py:percent notebook's code (markdown cells are comments, so the file parses as Python once magics go)."""
    lines = [("pass  # " + line) if line.lstrip().startswith(("%", "!")) else line
             for line in path.read_text().splitlines()]
    return "\n".join(lines)


def closure(entry: Path, root: Path = REPO_ROOT) -> list[str]:
    """Repository-relative paths of ``entry`` (first) and of every afcore file in its import closure (sorted)."""
    entry = Path(entry)
    source = _notebook_code(root / entry) if entry.suffix == ".py" and entry.parts[0] == "notebooks" \
        else (root / entry).read_text()
    seen: set[Path] = set()
    todo = list(imported_modules(source, str(entry)))
    while todo:
        dotted = todo.pop()
        parts = dotted.split(".")
        for i in range(1, len(parts) + 1):  # the packages on the way are imported too
            f = _module_file(".".join(parts[:i]), root)
            if f is None or f in seen:
                continue
            seen.add(f)
            todo.extend(imported_modules(f.read_text(), str(f)))
    files = {str(f.relative_to(root)) for f in seen}
    for f in list(files):
        files.update(EXTRA_SOURCES.get(f, []))
    return [str(entry)] + sorted(files - {str(entry)})


def stage_entry(cmd: str) -> Path:
    """The notebook or module a stage's command runs."""
    words = cmd.split()
    if "-m" not in words:
        raise ValueError(f"stage command {cmd!r}: expected 'python -m <module> ...'")
    module = words[words.index("-m") + 1]
    if module == "workbook.run":
        return Path(words[words.index("-m") + 2])
    return Path(*module.split(".")).with_suffix(".py")


def _is_code(dep: str) -> bool:
    return dep.startswith(tuple(f"{p}/" for p in PACKAGES) + ("notebooks/",))


def _stage_bodies(stages: dict):
    for name, stage in stages.items():
        yield name, (stage["do"] if "do" in stage else stage)


def expected(dvc_yaml: dict, root: Path = REPO_ROOT) -> dict[str, list[str]]:
    """Stage name -> the code dependencies its imports require."""
    return {name: closure(stage_entry(body["cmd"]), root) for name, body in _stage_bodies(dvc_yaml["stages"])}


def differences(root: Path = REPO_ROOT) -> list[str]:
    """One line per code dependency missing from dvc.yaml or listed there without being imported."""
    import yaml

    spec = yaml.safe_load((root / "dvc.yaml").read_text())
    wanted = expected(spec, root)
    problems = []
    for name, body in _stage_bodies(spec["stages"]):
        listed = {d for d in body.get("deps", []) if isinstance(d, str) and _is_code(d)}
        for dep in sorted(set(wanted[name]) - listed):
            problems.append(f"{name}: imports {dep} but dvc.yaml does not list it")
        for dep in sorted(listed - set(wanted[name])):
            problems.append(f"{name}: dvc.yaml lists {dep}, which its code does not import")
    return problems


def write(root: Path = REPO_ROOT) -> int:
    """Rewrite the code dependencies of every stage in dvc.yaml (code first, then the stage's other deps)."""
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 120
    yaml.indent(mapping=2, sequence=4, offset=2)
    path = root / "dvc.yaml"
    spec = yaml.load(path.read_text())
    changed = 0
    for name, body in _stage_bodies(spec["stages"]):
        code = closure(stage_entry(str(body["cmd"])), root)
        others = [d for d in body.get("deps", []) if not (isinstance(d, str) and _is_code(d))]
        new = code + others
        if list(body.get("deps", [])) != new:
            changed += 1
            deps = body["deps"]
            deps.clear()
            deps.extend(new)
    tmp = path.with_name(".dvc.yaml.tmp")
    with open(tmp, "w") as fh:
        yaml.dump(spec, fh)
    tmp.replace(path)
    return changed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workbook.deps", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cmd", choices=("check", "write"))
    args = parser.parse_args(argv)
    if args.cmd == "write":
        print(f"dvc.yaml: code dependencies rewritten for {write()} stages")
        return 0
    problems = differences()
    print("\n".join(problems) if problems else "dvc.yaml's code dependencies match the stages' imports")
    if problems:
        print("fix: python -m workbook.deps write", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
