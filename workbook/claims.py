"""Numbers quoted in prose, read from ``metrics/``: README and notebook text cannot drift from the results.

A quoted number is written immediately followed by an HTML comment (invisible when the Markdown is rendered)::

    AF-VAE encoder SPSNR 43.0<!--m:20_af_vae.json:rows.4.enc_spsnr_db:.1f--> dB

``FILE`` is a JSON file under ``metrics/``; ``PATH`` is dot-separated keys and list indices, where a list element
can also be selected by a field, ``table[config=D-1N].FID`` (a key holding a colon writes it ``%3A``, one holding a dot ``%2E``: the marker
itself is colon-separated, e.g. ``seed_contrasts.af_ldm_minus_vanilla_vae_cfa%3A image_spsnr.mean``); ``FMT`` is a Python format spec (``.1f``, ``+.2f``,
``,.0f``, ``.0%``). The number is the text between the previous blank (or ``|``, ``(``) and the comment.

    python -m workbook.claims          # check README.md, docs/*.md and notebooks/*.py; exit 1 listing mismatches
    python -m workbook.claims --fix    # rewrite every quoted number from metrics/ (after a re-run)

``make check-claims`` runs the check and ``tests/test_claims.py`` does too, so a re-run that changes a number fails
the tests until the prose is refreshed (``--fix``) and re-read: a number is easy to refresh, a sentence about which
row wins is not, so read the text again whenever ``--fix`` changes something.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from afcore.utils import REPO_ROOT

MARKER = re.compile(r"(?P<num>[^\s|(<>*]*)<!--m:(?P<file>[^:>]+):(?P<path>[^:>]+?)(?::(?P<fmt>[^:>]*))?-->")
_SELECT = re.compile(r"^(?P<key>[^\[]*)\[(?P<field>[^=\]]+)=(?P<value>[^\]]*)\]$")


PROFILE = "cpu"  # the profile whose numbers README and the notebooks quote


class ClaimError(ValueError):
    """A claim marker points at a missing file, key or list element, or its number does not match metrics/."""


def _tokens(path: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in path:
        if ch == "." and depth == 0:
            out.append(cur)
            cur = ""
            continue
        depth += ch == "["
        depth -= ch == "]"
        cur += ch
    return out + [cur]


def lookup(data, path: str):
    """Follow ``a.b.3.c`` / ``rows[config=A].fid`` through nested dicts and lists."""
    node = data
    for tok in _tokens(path):
        tok = tok.replace("%3A", ":").replace("%2E", ".")
        m = _SELECT.match(tok)
        if m:
            if m["key"]:
                node = _step(node, m["key"], path)
            if not isinstance(node, list):
                raise ClaimError(f"{path}: [{m['field']}={m['value']}] needs a list, got {type(node).__name__}")
            hits = [x for x in node if isinstance(x, dict) and str(x.get(m["field"])) == m["value"]]
            if len(hits) != 1:
                raise ClaimError(f"{path}: {len(hits)} elements have {m['field']}={m['value']} (need exactly one)")
            node = hits[0]
        else:
            node = _step(node, tok, path)
    return node


def _step(node, key: str, path: str):
    if isinstance(node, list):
        if not key.lstrip("-").isdigit() or not -len(node) <= int(key) < len(node):
            raise ClaimError(f"{path}: {key!r} is not an index of a list of {len(node)}")
        return node[int(key)]
    if isinstance(node, dict):
        if key not in node:
            raise ClaimError(f"{path}: no key {key!r} (keys: {sorted(node)[:12]})")
        return node[key]
    raise ClaimError(f"{path}: cannot index a {type(node).__name__} with {key!r}")


def render(value, fmt: str | None) -> str:
    if isinstance(value, str):
        return value
    return format(value, fmt or "")


def _files(root: Path) -> list[Path]:
    return [p for p in [root / "README.md", *sorted((root / "docs").glob("*.md")),
                        *sorted((root / "notebooks").glob("*.py"))] if p.exists()]


def scan(root: Path = REPO_ROOT, fix: bool = False, profile: str = PROFILE) -> list[str]:
    """Check (or rewrite, with ``fix``) every marked number; returns the problems found (empty when all match).

    The prose describes the ``profile`` run: a metrics file that records another profile (a smoke run writes into
    the same ``metrics/``) is a problem, and ``fix`` writes nothing unless every marker resolves from the right
    profile: never half a rewrite, never smoke numbers under cpu-profile text."""
    cache, problems, rewrites = {}, [], {}
    for path in _files(root):
        text = path.read_text()

        def replace(m):
            where = f"{path.relative_to(root)}: {m.group(0)}"
            try:
                if m["file"] not in cache:
                    f = root / "metrics" / m["file"]
                    if not f.exists():
                        raise ClaimError(f"metrics/{m['file']} does not exist")
                    cache[m["file"]] = json.loads(f.read_text())
                    recorded = cache[m["file"]].get("profile") if isinstance(cache[m["file"]], dict) else None
                    if recorded not in (None, profile):
                        problems.append(f"metrics/{m['file']}: written by the {recorded!r} profile, but the prose "
                                        f"describes the {profile!r} profile (re-run `dvc repro` with "
                                        f"base.profile: {profile}, or pass --profile {recorded})")
                expected = render(lookup(cache[m["file"]], m["path"]), m["fmt"])
            except (ClaimError, ValueError, TypeError) as exc:
                problems.append(f"{where}: {exc}")
                return m.group(0)
            if m["num"] != expected:
                if not fix:
                    problems.append(f"{where}: text says {m['num']!r}, metrics say {expected!r}")
                return expected + m.group(0)[len(m["num"]):]
            return m.group(0)

        new = MARKER.sub(replace, text)
        if new != text:
            rewrites[path] = new
    if fix and not problems:
        for path, new in rewrites.items():
            path.write_text(new)
    return problems


def count(root: Path = REPO_ROOT) -> int:
    return sum(len(MARKER.findall(p.read_text())) for p in _files(root))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workbook.claims", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fix", action="store_true",
                        help="rewrite the quoted numbers from metrics/ (nothing is written if any problem remains)")
    parser.add_argument("--profile", default=PROFILE, help=f"the profile the prose describes (default {PROFILE})")
    args = parser.parse_args(argv)
    problems = scan(fix=args.fix, profile=args.profile)
    for p in problems:
        print(p)
    verb = "rewrote from" if args.fix and not problems else "checked against"
    print(f"{count()} quoted numbers {verb} metrics/; {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
