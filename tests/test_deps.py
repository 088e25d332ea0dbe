"""dvc.yaml's code dependencies are exactly each stage's import closure (workbook.deps)."""
from __future__ import annotations

import shutil

from afcore.utils import REPO_ROOT
from workbook import deps


def _copy_repo(tmp_path):
    for name in ("afcore", "notebooks", "workbook"):
        shutil.copytree(REPO_ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    return tmp_path


def test_dvc_yaml_lists_exactly_the_code_each_stage_imports():
    assert deps.differences() == []


def test_an_import_added_without_its_dep_is_reported_and_write_fixes_it(tmp_path):
    root = _copy_repo(tmp_path)
    assert deps.differences(root) == []
    nb = root / "notebooks" / "10_data.py"
    assert "afcore/flow.py" not in deps.closure("notebooks/10_data.py", root)
    # an import inside a function body counts as much as one at the top
    nb.write_text(nb.read_text() + "\n# %%\ndef later():\n    from afcore import flow\n")
    problems = deps.differences(root)
    assert "data: imports afcore/flow.py but dvc.yaml does not list it" in problems
    assert deps.write(root) >= 1
    assert deps.differences(root) == []


def test_a_transitive_import_and_the_kernel_source_are_followed(tmp_path):
    root = _copy_repo(tmp_path)
    assert "afcore/normals.py" not in deps.closure("notebooks/10_data.py", root)
    (root / "afcore" / "data.py").write_text((root / "afcore" / "data.py").read_text() + "\nimport afcore.normals\n")
    got = deps.closure("notebooks/10_data.py", root)
    assert got[0] == "notebooks/10_data.py"
    assert {"afcore/normals.py", "afcore/__init__.py"} <= set(got)
    assert any(p.startswith("data: imports afcore/normals.py") for p in deps.differences(root))
    for stage, files in deps.expected(__import__("yaml").safe_load((root / "dvc.yaml").read_text()), root).items():
        assert ("afcore/cpu_kernel.py" in files) == ("afcore/csrc/filtered_act.cpp" in files), stage


def test_a_listed_dep_that_is_not_imported_is_reported(tmp_path):
    root = _copy_repo(tmp_path)
    text = (root / "dvc.yaml").read_text()
    (root / "dvc.yaml").write_text(text.replace("      - notebooks/10_data.py\n",
                                                "      - notebooks/10_data.py\n      - afcore/normals.py\n", 1))
    assert "data: dvc.yaml lists afcore/normals.py, which its code does not import" in deps.differences(root)
