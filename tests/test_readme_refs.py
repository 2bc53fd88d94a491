"""Every file and test the README points to exists: its guarantees cite the tests that
prove them, and a renamed test must not leave the README citing nothing."""

from __future__ import annotations

import re
from pathlib import Path

from tests import readme

ROOT = Path(__file__).resolve().parent.parent
TOP = r"(?:tests|dtq_server|dtq_worker|dtq_client|dtq|bench|scripts|protos)"


def test_every_cited_test_exists() -> None:
    cited = re.findall(r"`(tests/[\w/.]+\.py)(?:::([\w\-]+))?", readme.TEXT)
    assert len(cited) > 30  # the guarantees table alone cites more
    for path, function in cited:
        source = ROOT / path
        assert source.is_file(), f"the README cites {path}, which does not exist"
        if function:
            assert re.search(rf"\bdef {function}\b", source.read_text()), f"{path}::{function}"


def test_every_test_named_alone_exists() -> None:
    """``::name`` after a cited file names another test of that file."""
    named = set(re.findall(r"`::(\w+)`", readme.TEXT))
    sources = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    assert [name for name in sorted(named) if f"def {name}" not in sources] == []


def test_every_file_it_points_to_exists() -> None:
    linked = re.findall(rf"\]\(({TOP}/[\w/.\-]+)\)", readme.TEXT)
    quoted = re.findall(rf"`({TOP}/[\w/.\-]+\.(?:py|proto|toml|js|sh))`", readme.TEXT)
    assert len(linked) + len(quoted) > 10
    assert [p for p in sorted(set(linked + quoted)) if not (ROOT / p).exists()] == []
