"""Project-level checks: packaging in sync, notebooks well-formed, params validation, stage parameter names."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import yaml

from workbook import params as P
from workbook.exercises import strip_solutions
from workbook.run import parameter_names, stage_parameters
from afcore.utils import REPO_ROOT

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("[0-9]*.py"))


def _requirement_names(specs):
    return {re.split(r"[=<>!~\[ ]", s.strip(), maxsplit=1)[0].lower(): s.strip().replace(" ", "") for s in specs}


def test_environment_yml_and_pyproject_list_the_same_packages():
    import tomllib

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pip = [p for p in pip if not p.startswith("-e")]
    assert _requirement_names(project) == _requirement_names(pip)
    assert _requirement_names(project)["torch"] == "torch==2.13.0"


def test_every_notebook_has_one_literal_parameters_cell_and_no_outputs():
    assert NOTEBOOKS, "no notebooks found"
    for nb in NOTEBOOKS:
        names = parameter_names(nb)  # raises unless exactly one cell, literals only
        assert {"profile", "seed", "device"} <= set(names), f"{nb.name}: base parameters missing"
    # The .py sources cannot hold outputs; executed notebooks must never be committed either.
    import subprocess

    tracked = subprocess.run(["git", "ls-files", "*.ipynb"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert tracked.returncode != 0 or tracked.stdout.strip() == "", f"tracked notebooks: {tracked.stdout}"


NON_NOTEBOOK_STAGES = {"bench", "bench_2threads"}  # a benchmark script, not a notebook: it has no parameters cell to check


def _stages():
    return yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]


def _expand(stage: dict) -> list[dict]:
    """foreach/matrix stages -> their command strings are templated; names come from --params anyway."""
    return [stage.get("do", stage)]


def test_every_stage_passes_only_names_its_notebook_declares():
    params = P.load()
    checked = 0
    for name, stage in _stages().items():
        if name in NON_NOTEBOOK_STAGES:
            continue
        for body in _expand(stage):
            cmd = body["cmd"] if isinstance(body["cmd"], str) else " ".join(body["cmd"])
            m = re.search(r"workbook\.run\s+(\S+)\s+--params\s+(\S+)", cmd)
            assert m, f"stage {name}: cmd must run a notebook through workbook.run: {cmd}"
            notebook, spec = m.groups()
            passed = set(stage_parameters(spec, params))
            sets = re.search(r"--set\s+((?:\w+=\S+\s*)+)", cmd)
            passed |= {pair.split("=")[0] for pair in sets.group(1).split()} if sets else set()
            declared = set(parameter_names(REPO_ROOT / notebook))
            assert passed <= declared, f"stage {name}: {sorted(passed - declared)} not in {notebook}'s parameters"
            checked += 1
    assert checked >= 4


def test_committed_params_yaml_is_the_cpu_profile():
    assert P.load() == P.build("cpu")


def test_profiles_build_and_validate():
    for profile in P.PROFILES:
        built = P.build(profile)
        assert built["base"]["profile"] == profile


def test_params_validation_names_the_bad_key(tmp_path):
    good = P.build("cpu")
    bad = yaml.safe_load(yaml.safe_dump(good))
    bad["base"]["sed"] = 1
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(P.ParamsError, match=r"base\.sed: unknown key"):
        P.load(path)
    bad = yaml.safe_load(yaml.safe_dump(good))
    bad["base"]["seed"] = "zero"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(P.ParamsError, match=r"base\.seed: expected int"):
        P.load(path)
    with pytest.raises(P.ParamsError, match="unknown profile"):
        P.build("laptop")


@pytest.mark.parametrize("key, value, allowed", [
    ("filters.cutoff", 1.2, r"a number in \(0, 1\)"),
    ("filters.image", "lena", "one of .*astronaut"),
    ("sampling.decimation", 1, "integer >= 2"),
    ("design.numtaps", 12, "odd integer"),
    ("speed.sizes", [16, 0], "non-empty list"),
    ("resampling.activations", ["relu", "swish"], "one of"),
])
def test_theory_parameters_out_of_range_are_named_before_any_work(key, value, allowed):
    """Every profile passes the range table; a value outside it stops with its key and the allowed range."""
    for profile in P.PROFILES:
        P.validate(P.build(profile))
    bad = P.build("cpu")
    section, name = key.split(".")
    bad[section][name] = value
    with pytest.raises(P.ParamsError, match=rf"{re.escape(key)}: .* out of range; allowed: .*{allowed}"):
        P.validate(bad)


def test_a_colour_or_small_photograph_reaches_the_notebooks_as_a_grey_image_or_a_clear_error():
    """filters.image: astronaut (a colour photo) used to reach a 2-D filter as a 3-D array."""
    from afcore import course

    gray = course.gray_photo("astronaut")
    assert gray.shape == (512, 512) and gray.dtype == np.float64 and 0 <= gray.min() and gray.max() <= 1
    assert np.allclose(course.gray_photo("camera") * 255, skimage.data.camera())
    with pytest.raises(ValueError, match=r"'page' is 191x384 pixels, smaller than the 256-pixel crop.*'brick'"):
        course.gray_photo("page", min_side=256)
    with pytest.raises(ValueError, match="image: unknown photograph 'lena'"):
        course.gray_photo("lena")


def test_stage_parameters_rejects_unknown_sections():
    with pytest.raises(P.ParamsError, match="unknown section"):
        stage_parameters("base,nope", P.load())


def test_exercise_copies_strip_solution_cells(tmp_path):
    import jupytext

    src = tmp_path / "nb"
    src.mkdir()
    (src / "99_demo.py").write_text(
        '# %% tags=["parameters"]\nseed = 0\n\n# %% [markdown]\n# Exercise 1\n\n'
        '# %% tags=["solution"]\nanswer = 42\n\n# %%\nprint("kept")\n'
    )
    nb = jupytext.read(src / "99_demo.py")
    student, removed = strip_solutions(nb)
    assert removed == 1
    sources = [c.source for c in student.cells]
    assert "answer = 42" not in "\n".join(sources) and 'print("kept")' in sources
    from workbook.exercises import write_student_copies

    assert write_student_copies(src, tmp_path / "student") == {"99_demo": 1}
    assert "answer = 42" not in (tmp_path / "student" / "99_demo.ipynb").read_text()


def test_theory_notebooks_run_on_their_device_parameter():
    """00-05 default to device "auto" and resolve it with pick_device (a GPU run must not silently stay on the CPU)."""
    for stem in ("00_", "01_", "02_", "03_", "04_", "05_"):
        nb = next(p for p in NOTEBOOKS if p.name.startswith(stem))
        assert parameter_names(nb)["device"] == "auto", f"{nb.name}: the device default must be 'auto'"
        assert "dev = pick_device(device, deterministic)" in nb.read_text(), f"{nb.name}: never resolves its device parameter"


def test_theory_notebooks_have_exercises_with_solutions():
    for stem in ("00_", "01_", "02_", "03_"):
        nb = next((p for p in NOTEBOOKS if p.name.startswith(stem)), None)
        assert nb is not None, f"theory notebook {stem}* missing"
        assert nb.read_text().count('tags=["solution"]') >= 2, f"{nb.name}: needs 2-3 exercises with solutions"


def test_set_parameters_parse_yaml_values_and_reject_malformed_pairs():
    from workbook.run import set_parameters

    assert set_parameters(["dataset=mnist_m", "config=D-1N", "steps=3", "flag=true"]) == {
        "dataset": "mnist_m", "config": "D-1N", "steps": 3, "flag": True}
    for bad in ("noequals", "1x=3", "=3"):
        with pytest.raises(P.ParamsError, match="--set"):
            set_parameters([bad])


def test_matrix_stages_expand_to_one_stage_per_data_set_and_config():
    stages = _stages()
    assert set(stages["configs_train"]["matrix"]) == {"dataset", "config"}
    assert "--set dataset=${item.dataset}" in " ".join(stages["configs_train"]["cmd"].split())
    assert stages["configs_eval"]["foreach"] == "${configs.config_datasets}"


def _afcore_imports() -> dict[str, set[str]]:
    """module -> the afcore modules it imports anywhere in its source (top level or inside functions)."""
    import ast

    graph = {}
    for path in sorted((REPO_ROOT / "afcore").glob("*.py")):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "afcore":
                deps.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("afcore."):
                deps.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                deps.update(a.name.split(".")[1] for a in node.names if a.name.startswith("afcore."))
        graph[path.stem] = deps - {path.stem}
    return graph


def test_afcore_has_no_import_cycles():
    """One home per concept, dependencies one way: a cycle (even through an import inside a function) fails."""
    graph = _afcore_imports()
    assert graph["surgery"] >= {"layers"} and "surgery" not in graph["layers"]
    assert "filters" in graph["signal"] and "filters" in graph["fastops"] and not graph["filters"]
    # fastops computes, backend decides which engine runs (it imports the kernels only inside its functions)
    assert "backend" in graph["fastops"] and "fastops" not in graph["backend"]
    assert not {"backend", "fastops"} & (graph["cpu_kernel"] | graph["triton_kernel"])
    state: dict[str, int] = {}

    def visit(module, path):
        state[module] = 1
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path + [module, dep]))
            if dep not in state:
                visit(dep, path + [module])
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module, [])


def test_layers_import_downward_only():
    """signal core -> layers and metrics -> models -> stages -> notebooks, and the pipeline tools apart:
    the library never imports a stage or a tool, and a stage never imports a tool or another notebook."""
    from workbook.deps import imported_modules

    def imports(path):
        return {m for m in imported_modules(path.read_text(), str(path))}

    for path in sorted((REPO_ROOT / "afcore").glob("*.py")):
        assert not {m for m in imports(path) if m.startswith("afcore.stages")}, f"{path.name} imports a stage"
    import ast

    for path in sorted((REPO_ROOT / "afcore").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any(n.split(".")[0] == "workbook" for n in names), f"{path} imports the pipeline tools"
    core = {"filters", "signal", "fastops", "cpu_kernel", "triton_kernel", "backend"}
    graph = _afcore_imports()
    for module in core & set(graph):
        above = graph[module] - core - {"utils", "device", "devcheck"}
        assert not above, f"the signal core module {module} imports {sorted(above)} from a layer above it"
