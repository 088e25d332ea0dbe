"""Seed-level statistics (``afcore.stages.seeds``): checked against scipy's t test and Holm's procedure worked by
hand."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from afcore.stages import seeds


def test_seed_summary_is_the_one_sample_t_test_over_seeds():
    values = [1.9, 0.4, 2.7, 1.1, 0.8]
    s = seeds.seed_summary(values)
    ref = stats.ttest_1samp(values, 0.0)
    assert s["mean"] == pytest.approx(np.mean(values), rel=1e-12)
    assert s["se"] == pytest.approx(stats.sem(values), rel=1e-12)
    assert s["t"] == pytest.approx(ref.statistic, rel=1e-12) and s["p"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert s["n_seeds"] == 5 and s["seeds_agreeing"] == 5 and s["per_seed"] == values
    mixed = seeds.seed_summary([1.0, -0.5, 2.0])
    assert mixed["seeds_agreeing"] == 2


def test_one_seed_has_no_error_and_is_never_resolved():
    s = seeds.seed_summary([5.0])
    assert s["se"] is None and s["p"] is None
    assert "not resolved" in seeds.seed_verdict(s, None, primary=True)


def test_holm_matches_the_step_down_procedure_worked_by_hand():
    # sorted p: 0.01 (x3 = 0.03), 0.02 (x2 = 0.04), 0.04 (x1 = 0.04); monotone, so the last stays 0.04
    assert seeds.holm({"a": 0.04, "b": 0.01, "c": 0.02}) == pytest.approx({"a": 0.04, "b": 0.03, "c": 0.04})
    # monotonicity: a smaller raw p later in the order cannot get a smaller adjusted p than an earlier one
    assert seeds.holm({"a": 0.01, "b": 0.011}) == pytest.approx({"a": 0.02, "b": 0.02})
    assert seeds.holm({"a": 0.6, "b": None}) == {"a": 0.6, "b": None}


def test_contrast_table_adjusts_primary_contrasts_only():
    per_seed = {"gain": [2.0, 2.2, 1.8, 2.1, 1.9], "other": [0.1, -0.2, 0.3, 0.0, 0.2], "side": [1.0, 1.1, 0.9, 1.2, 1.0]}
    table = seeds.contrast_table(per_seed, primary=["gain", "other"])
    p_gain, p_other = table["gain"]["p"], table["other"]["p"]
    assert table["gain"]["p_holm"] == pytest.approx(min(1.0, 2 * p_gain))
    assert table["other"]["p_holm"] == pytest.approx(max(2 * p_gain, p_other))
    assert table["side"]["p_holm"] is None and not table["side"]["primary"]
    assert table["gain"]["verdict"].startswith("higher, resolved (5 of 5")
    assert table["other"]["verdict"].startswith("not resolved")
    assert "exploratory" in table["side"]["verdict"]
    with pytest.raises(ValueError, match="primary contrasts"):
        seeds.contrast_table(per_seed, primary=["missing"])


def test_training_seeds_and_their_folders(tmp_path):
    assert seeds.training_seeds(7, 3) == [7, 1007, 2007]
    with pytest.raises(ValueError, match=">= 1"):
        seeds.training_seeds(0, 0)
    assert seeds.seed_path(tmp_path / "ldm", 0, 0) == tmp_path / "ldm"
    assert seeds.seed_path(tmp_path / "ldm", 1000, 0) == tmp_path / "ldm" / "seed1000"


def test_contrast_markdown_lists_every_contrast_with_its_p_and_verdict():
    table = seeds.contrast_table({"gain": [2.0, 2.2, 1.8], "side": [0.1, -0.2, 0.0]}, primary=["gain"])
    lines = seeds.contrast_markdown(table).splitlines()
    assert len(lines) == 2 + 2 and lines[2].startswith("| gain (primary) | +2.00 ± 0.12 | +2.00, +2.20, +1.80 |")
    assert f"{table['gain']['p_holm']:.3f}" in lines[2] and f"{table['side']['p']:.3f}" in lines[3]
    assert lines[3].endswith(f"| {table['side']['verdict']} |")
