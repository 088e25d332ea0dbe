"""workbook.kernel: a notebook opened in Lab from notebooks/ or student/ runs in the repository root, quietly."""
import tempfile

import pytest

from workbook import kernel

jupyter_client = pytest.importorskip("jupyter_client")


def _cwd_and_log(spec_dir, cwd):
    """Start the kernelspec in ``cwd``, ask it for its working directory, return (cwd, kernel's stderr)."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    km = KernelManager(kernel_name=kernel.NAME,
                       kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec_dir)], ensure_native_kernel=False))
    log = tempfile.TemporaryFile()
    km.start_kernel(cwd=str(cwd), stderr=log)
    out = []
    try:
        client = km.client()
        client.start_channels()
        client.wait_for_ready(timeout=60)
        reply = client.execute_interactive("import os; print(os.getcwd())", timeout=60,
                                           output_hook=lambda msg: out.append(msg))
        assert reply["content"]["status"] == "ok"
        client.stop_channels()
    finally:
        km.shutdown_kernel(now=True)
    printed = "".join(m["content"].get("text", "") for m in out if m["msg_type"] == "stream").strip()
    log.seek(0)
    return printed, log.read().decode()


def test_the_kernel_moves_to_the_workspace_root_only_from_its_notebook_folders(tmp_path):
    spec = kernel.install(tmp_path / "env")
    assert spec.is_file() and kernel.kernelspec()["display_name"] == kernel.DISPLAY_NAME
    root = tmp_path / "checkout"
    for folder in ("notebooks", "student", "elsewhere"):
        (root / folder).mkdir(parents=True)
    (root / "dvc.yaml").write_text("stages: {}\n")
    spec_dir = tmp_path / "env" / "share" / "jupyter" / "kernels"
    for folder, expected in (("notebooks", root), ("student", root), ("elsewhere", root / "elsewhere"), ("", root)):
        cwd, log = _cwd_and_log(spec_dir, root / folder)
        assert cwd == str(expected), folder
        assert "without encryption" not in log
    (root / "dvc.yaml").unlink()  # not a workbook checkout: a folder that happens to be called notebooks stays put
    assert _cwd_and_log(spec_dir, root / "notebooks")[0] == str(root / "notebooks")
