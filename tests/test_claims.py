"""Numbers quoted in README, docs and notebook text match metrics/ (afcore.claims), and the checker itself works."""
import json

import pytest

from afcore import claims
from afcore.utils import REPO_ROOT


def test_every_quoted_number_matches_metrics():
    problems = claims.scan(REPO_ROOT)
    assert not problems, "\n".join(problems) + "\n(run `python -m afcore.claims --fix`, then re-read the prose)"
    assert claims.count(REPO_ROOT) > 0


def test_the_checker_finds_a_drifted_number_and_fix_rewrites_it(tmp_path):
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "m.json").write_text(json.dumps(
        {"rows": [{"config": "A", "fid": 12.345}, {"config": "D-1N", "fid": 9.87}], "gain": 0.0312}))
    readme = tmp_path / "README.md"
    readme.write_text("FID 12.3<!--m:m.json:rows[config=A].fid:.1f--> and | 9.9<!--m:m.json:rows.1.fid:.1f--> |"
                      " gain 3.1%<!--m:m.json:gain:.1%-->\n")
    assert claims.scan(tmp_path) == []
    readme.write_text(readme.read_text().replace("12.3<", "12.4<"))
    problems = claims.scan(tmp_path)
    assert len(problems) == 1 and "'12.4'" in problems[0] and "'12.3'" in problems[0]
    assert claims.scan(tmp_path, fix=True) == []
    assert "FID 12.3<!--" in readme.read_text() and claims.scan(tmp_path) == []
    readme.write_text("x 1<!--m:m.json:rows[config=B].fid:.1f--> y 2<!--m:nope.json:a-->\n")
    problems = claims.scan(tmp_path)
    assert len(problems) == 2 and "config=B" in problems[0] and "nope.json" in problems[1]


def test_lookup_rejects_bad_paths():
    data = {"a": [1, 2], "b": {"c": 3}}
    assert claims.lookup(data, "b.c") == 3 and claims.lookup(data, "a.-1") == 2
    for bad in ("a.5", "b.d", "b.c.e"):
        with pytest.raises(claims.ClaimError):
            claims.lookup(data, bad)
