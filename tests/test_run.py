"""workbook.run: a failed teaching claim is reported as one (with the parameters), other failures are not, and a
report is written whole with normal permissions or not at all."""
import os

import pytest

from workbook import run

NOTEBOOK = '''# %% tags=["parameters"]
cutoff = 0.25
fail = False

# %%
if fail:
    raise ValueError("broken input")

# %%
half_band = cutoff <= 0.25
assert half_band, "the transition band sits below Nyquist"
'''


@pytest.fixture
def notebook(tmp_path):
    path = tmp_path / "claims.py"
    path.write_text(NOTEBOOK)
    return path


@pytest.mark.slow
def test_a_failed_teaching_claim_names_the_claim_and_the_parameters(notebook, tmp_path):
    out = tmp_path / "reports" / "claims.ipynb"
    assert run.run_notebook(notebook, {"cutoff": 0.25}, out, cwd=tmp_path) == out
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask
    out.unlink()
    with pytest.raises(run.TeachingClaimError) as err:
        run.run_notebook(notebook, {"cutoff": 0.4}, out, cwd=tmp_path)
    message = str(err.value)
    assert "teaching claim" in message and "'cutoff': 0.4" in message
    assert "assert half_band" in message and "below Nyquist" in message
    assert not out.exists() and not list(out.parent.glob(".*"))  # nothing half-written
    with pytest.raises(RuntimeError, match="papermill failed") as err:
        run.run_notebook(notebook, {"fail": True}, out, cwd=tmp_path)
    assert not isinstance(err.value, run.TeachingClaimError)
