"""Markdown of the kernel's reports (``scripts/kernel_cost.py``, ``scripts/bench_kernel.py``)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["replace_section", "table_head"]


def table_head(columns: str) -> list[str]:
    """The two header lines of a table from ``"name|name:|..."`` (a trailing ``:`` right-aligns)."""
    names = columns.split("|")
    heads = [n[:-1] if n.endswith(":") else n for n in names]
    rules = ["---:" if n.endswith(":") else "---" for n in names]
    return ["| " + " | ".join(heads) + " |", "| " + " | ".join(rules) + " |"]


def replace_section(path: Path, heading: str, section: str) -> None:
    """Replace the section of ``path`` whose heading line is exactly ``heading`` (up to the next
    ``## ``) with ``section``, or append it; the rest of the file stays as it is."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start = text.find(heading + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    else:
        end = text.find("\n## ", start + len(heading))
        tail = text[end + 1 :] if end >= 0 else ""
        text = text[:start] + section.rstrip("\n") + "\n" + ("\n" + tail if tail else "")
    path.write_text(text)
