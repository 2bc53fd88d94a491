"""The README as tests read it, to keep its references true (CLI options, metrics)."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

TEXT = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def section(heading: str) -> str:
    """The README's text from ``heading`` to the next heading of level 3 or above."""
    start = TEXT.index(heading)
    ends = [i for i in (TEXT.find("\n### ", start + 1), TEXT.find("\n## ", start + 1)) if i != -1]
    return TEXT[start : min(ends, default=len(TEXT))]


def cells(line: str) -> list[str]:
    """A markdown table row's cells (``\\|`` inside a cell is not a border)."""
    return re.split(r"(?<!\\)\|", line)[1:-1]


def tables(text: str) -> list[list[list[str]]]:
    """Every table of ``text``: its body rows (header and rule left out), as cells."""
    found: list[list[list[str]]] = []
    rows: list[str] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            rows.append(line)
        elif rows:
            found.append([cells(row) for row in rows[2:]])
            rows = []
    return found


def metric_names(table: list[list[str]]) -> set[str]:
    """The metric names a metrics table's first column gives (``process_*`` as written)."""
    return {name for row in table for name in re.findall(r"`([a-z_*]+)`", row[0])}


def served_metric_names(page: str) -> set[str]:
    """The names of a /metrics page as the README writes them: counters with ``_total``
    (their ``_created`` time left out), a histogram by its base name, every ``process_``
    metric as ``process_*``."""
    names = set()
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            if sample.name.endswith("_created"):  # a counter's start time, not a metric
                continue
            name = re.sub(r"_(bucket|sum|count)$", "", sample.name)
            names.add("process_*" if name.startswith("process_") else name)
    return names
