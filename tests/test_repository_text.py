"""The repository's text describes the product as it is, not how it was made.

README, docs, model cards, docstrings and comments say nothing of how the work was organised
(which round of work, which tracker entry, which working folder): a reader cannot look those
up, and they date the text. The patterns are written so that this file does not match them.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLACES = ["README.md", "pyproject.toml", "tox.ini", ".ci", "docs", "src", "benchmarks", "scripts", "tests"]
SKIP_DIRS = {"__pycache__", ".pytest_cache"}
INTERNAL = re.compile(
    r"sess(?:ion)|he1{2}|em1[6]|issue\s*#?[0-9]|the issue['’]s|closing\snote|/wor[k]/",
    re.IGNORECASE,
)


def text_files() -> list[Path]:
    found = []
    for place in PLACES:
        path = ROOT / place
        for p in [path] if path.is_file() else sorted(path.rglob("*")):
            if p.is_file() and not SKIP_DIRS.intersection(p.relative_to(ROOT).parts) and ".egg-info" not in str(p):
                found.append(p)
    return found


def test_no_text_names_how_the_project_was_made():
    bad = []
    for path in text_files():
        data = path.read_bytes()
        if b"\0" in data:  # images, model files, compiled caches
            continue
        for n, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            if INTERNAL.search(line):
                bad.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:120]}")
    assert not bad, "text about how the project was made:\n" + "\n".join(bad)


def test_the_check_sees_the_files_it_should():
    names = {p.relative_to(ROOT).as_posix() for p in text_files()}
    assert {"README.md", "src/napari_unet/models/bundled.md", "benchmarks/real_he.py", ".ci/run"} <= names
    assert INTERNAL.search("as measured in Sess" + "ion 3") and INTERNAL.search("see iss" + "ue 14")
    assert not INTERNAL.search("a napari viewer")
