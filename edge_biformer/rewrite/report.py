"""What a rewrite found and did: the per-stage table of BRA blocks, the block records, the summary."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from edge_biformer.rewrite.checks import BlockCheck, GraphCheck
from edge_biformer.rewrite.match import BraMatch, PartialMatch
from edge_biformer.utils import log

__all__ = ["RewriteReport", "StageRow", "block_record", "print_stage_table", "stage_index", "stage_rows"]


@dataclass
class StageRow:
    """One line of the per-stage table: consecutive blocks with the same routing."""

    stage: int
    found: int
    replaced: int
    n_win: int | None
    topk: int | None
    num_heads: int | None
    c_qk: int | None
    c_v: int | None
    first: str
    last: str


@dataclass
class RewriteReport:
    """What a rewrite found, did and measured."""

    input: str
    output: str | None
    found: int
    replaced: int
    stages: list[StageRow]
    blocks: list[dict[str, Any]]
    partial: list[dict[str, Any]]
    plugin_nodes: list[str]
    nodes_before: int
    nodes_after: int
    qdq_before: int
    qdq_after: int
    block_checks: list[BlockCheck] = field(default_factory=list)
    output_check: GraphCheck | None = None
    verify_skipped: str | None = None
    kept_alive: list[str] = field(default_factory=list)
    seconds: float = 0.0
    manifest: str | None = None
    #: The precision of the written graph (``fp32``, ``fp16`` or ``int8``): what to build it at.
    precision: str = "fp32"


def stage_rows(
    replaced: Sequence[BraMatch], partial: Sequence[PartialMatch], matches: Sequence[BraMatch] = ()
) -> list[StageRow]:
    """Per-stage counts of blocks found and replaced (``matches`` not in ``replaced``: found only)."""
    by_index: dict[int, tuple[tuple, BraMatch | None, str]] = {}
    for m in matches:
        by_index[m.index] = (m.stage_key, None, m.name)
    for m in replaced:
        by_index[m.index] = (m.stage_key, m, m.name)
    for p in partial:
        by_index[p.index] = (p.stage_key, None, p.name)
    rows: list[StageRow] = []
    current_key: tuple | None = None
    for index in sorted(by_index):
        key, match, name = by_index[index]
        if not rows or key != current_key:
            topk = key[0] if key else None
            rows.append(StageRow(len(rows) + 1, 0, 0, None, topk, None, None, None, name, name))
            current_key = key
        row = rows[-1]
        row.found += 1
        row.last = name
        if match is not None:
            row.replaced += 1
            row.n_win, row.topk, row.num_heads = match.n_win, match.topk, match.num_heads
            row.c_qk, row.c_v = match.q.width, match.v.width
    return rows


def stage_index(matches: Sequence[BraMatch], partial: Sequence[PartialMatch]) -> dict[int, int]:
    """Block index -> stage number (consecutive blocks with the same routing share a stage)."""
    order = sorted([(m.index, m.stage_key) for m in matches] + [(p.index, p.stage_key) for p in partial])
    stage, previous, result = 0, None, {}
    for index, key in order:
        if stage == 0 or key != previous:
            stage += 1
            previous = key
        result[index] = stage
    return result


def block_record(
    match: BraMatch, stage: int, plugin_node: str | None, check: BlockCheck | None
) -> dict[str, Any]:
    """One replaced block, as the manifest lists it."""
    record: dict[str, Any] = {
        "index": match.index,
        "name": match.name,
        "stage": stage,
        "plugin_node": plugin_node,
        "n_win": match.n_win,
        "num_heads": match.num_heads,
        "topk": match.topk,
        "scale": match.scale,
        "c_qk": match.q.width,
        "c_v": match.v.width,
        "gather": match.gather_kind,
        "qkv_layout": match.q.form,
        "layout": match.layout,
        "kv_pooled": match.kv_pooled,
        "q_region": list(match.q_region),
        "kv_region": list(match.kv_region),
        "q": match.q.tensor.name,
        "k": match.k.tensor.name,
        "v": match.v.tensor.name,
        "o": match.output.name,
    }
    if check is not None:
        record["check"] = {
            "max_abs_diff": check.max_abs_diff,
            "max_rel_diff": check.max_rel_diff,
            "wrong_pairing_rel_diff": check.wrong_pairing,
            "inconclusive": check.inconclusive,
        }
        if check.exercised is not None:
            record["check"]["with_random_qkv"] = {
                "max_abs_diff": check.exercised.max_abs_diff,
                "max_rel_diff": check.exercised.max_rel_diff,
                "wrong_pairing_rel_diff": check.exercised.wrong_pairing,
            }
    return record


_COLUMNS = (("stage", 5), ("found", 5), ("replaced", 8), ("n_win", 5), ("topk", 4), ("heads", 5))
_COLUMNS += (("C_qk", 5), ("C_v", 5))


def _row(values: list[object]) -> str:
    cells = ["-" if v is None else str(v) for v in values]
    fixed = "  ".join(f"{c:>{w}}" for c, (_, w) in zip(cells, _COLUMNS, strict=False))
    return "  " + "  ".join([fixed, *cells[len(_COLUMNS) :]])


def print_stage_table(report: RewriteReport) -> None:
    """The per-stage table of BRA blocks found and replaced."""
    log("BRA blocks per stage:")
    print(_row([name for name, _ in _COLUMNS] + ["blocks"]))
    for r in report.stages:
        names = r.first if r.first == r.last else f"{r.first} .. {r.last}"
        print(_row([r.stage, r.found, r.replaced, r.n_win, r.topk, r.num_heads, r.c_qk, r.c_v, names]))
    print(_row(["total", report.found, report.replaced]))
