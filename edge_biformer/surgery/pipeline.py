"""``rewrite_onnx``: load, match, check, rewrite, verify and write a graph (what the CLI runs)."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import onnx
import onnx_graphsurgeon as gs

from edge_biformer import __version__
from edge_biformer.errors import EdgeBiformerError
from edge_biformer.surgery.contract import (
    OP_DOMAIN,
    OP_TYPE,
    OPSET_VERSION,
    PLUGIN_NAMESPACE,
    PLUGIN_VERSION,
    register_onnx_schema,
)
from edge_biformer.surgery.graph import GraphInfo
from edge_biformer.surgery.match import BraMatch, MatchResult, PartialMatch, find_bra_blocks
from edge_biformer.surgery.rewrite import export_rewritten, replace_blocks
from edge_biformer.surgery.verify import (
    FLOAT32_TOLERANCE,
    REDUCED_PRECISION_TOLERANCE,
    BlockCheck,
    OutputCheck,
    bypass_qdq,
    check_blocks,
    compare_outputs,
    make_feeds,
    run_with_taps,
)
from edge_biformer.utils import atomic_output, check_onnx_output, manifest_path, sha256_file

__all__ = [
    "RewriteError",
    "RewriteReport",
    "Rewriter",
    "StageRow",
    "analyse_model",
    "load_onnx",
    "rewrite_model",
    "rewrite_onnx",
    "save_onnx",
    "write_manifest",
]

_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


class RewriteError(EdgeBiformerError):
    """A graph that cannot be rewritten as asked (no BRA, partial matches, failed verification)."""


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
    """What :func:`rewrite_onnx` found, did and measured."""

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
    output_check: OutputCheck | None = None
    verify_skipped: str | None = None
    kept_alive: list[str] = field(default_factory=list)
    seconds: float = 0.0


def load_onnx(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Load an ONNX file, with one clear error for missing, empty, truncated or non-ONNX files."""
    path = Path(path)
    if not path.exists():
        raise RewriteError(
            f"{path}: no such file; give the path of an .onnx file (edge-biformer export writes one)"
        )
    if path.is_dir():
        raise RewriteError(f"{path} is a directory; give the path of an .onnx file")
    if path.stat().st_size == 0:
        raise RewriteError(f"{path} is empty (0 bytes); export the model again")
    try:
        model = onnx.load(str(path))
    except Exception as err:
        raise RewriteError(
            f"{path} is not a readable ONNX model ({_first_line(err)}); the file is probably truncated or "
            "not ONNX: export it again or copy it completely"
        ) from err
    if not model.graph.node:
        raise RewriteError(
            f"{path} has no graph nodes: it is not an ONNX model (or it is truncated); export it again"
        )
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        raise RewriteError(
            f"{path} is not a valid ONNX model ({_first_line(err)}); export it again or fix the graph first"
        ) from err
    return model


def analyse_model(model: onnx.ModelProto) -> tuple[gs.Graph, GraphInfo, MatchResult]:
    """Import ``model`` into onnx-graphsurgeon and find its BRA blocks (the model is not changed)."""
    info = GraphInfo.from_model(model)
    graph = gs.import_onnx(model)
    graph.toposort()
    return graph, info, find_bra_blocks(graph, info)


def _stage_rows(
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


def _block_record(
    match: BraMatch, stage: int, plugin_node: str | None, check: BlockCheck | None
) -> dict[str, Any]:
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
        "q": match.q.tensor.name,
        "k": match.k.tensor.name,
        "v": match.v.tensor.name,
        "o": match.output.name,
    }
    if check is not None:
        record["check"] = {"max_abs_diff": check.max_abs_diff, "max_rel_diff": check.max_rel_diff}
    return record


def _partial_items(partial: Sequence[PartialMatch]) -> str:
    return "; ".join(f"block {p.index} ({p.name}): {p.reason}" for p in partial)


def _format_partial(partial: Sequence[PartialMatch], source: str) -> str:
    items = _partial_items(partial)
    return (
        f"{source}: {len(partial)} BRA block(s) match only in part and cannot become "
        f"{OP_TYPE} nodes: {items}. Export the model with the supported configuration "
        "(hard routing, kv_downsample_mode='identity'), or pass --skip-partial to replace the other "
        "blocks and keep these as native ONNX ops"
    )


class Rewriter:
    """The rewrite as separate steps (the CLI logs one line per step; :func:`rewrite_model` runs all).

    Steps, in order: :meth:`find`, :meth:`check` (optional), :meth:`apply` (raises on partial
    matches or no match), :meth:`verify_outputs` (optional), then :meth:`report`.
    """

    def __init__(self, model: onnx.ModelProto, *, source: str = "the model") -> None:
        self.model = model
        self.source = source
        self.matches: list[BraMatch] = []
        self.partial: list[PartialMatch] = []
        self.block_checks: list[BlockCheck] = []
        self.output_check: OutputCheck | None = None
        self.verify_skipped: str | None = "--no-verify"
        self.rewritten: onnx.ModelProto | None = None
        self.plugin_nodes: list[str] = []
        self.kept_alive: list[str] = []
        self._feeds: dict[str, Any] = {}
        self._values: dict[str, Any] = {}
        self._start = time.perf_counter()
        self.graph, self.info, result = analyse_model(model)
        self._result = result
        self.nodes_before = len(self.graph.nodes)
        self.qdq_before = sum(1 for n in self.graph.nodes if n.op in _QDQ_OPS)

    def find(self) -> MatchResult:
        """The BRA blocks of the graph (found at construction)."""
        self.matches = list(self._result.matches)
        self.partial = list(self._result.partial)
        return self._result

    def check(
        self,
        input_shapes: Mapping[str, Sequence[int]] | None = None,
        default_side: int | None = None,
    ) -> list[BlockCheck]:
        """Run the original graph once and check every match against the op reference.

        Blocks that fail become partial matches. Inputs: ``input_shapes`` by name, else static dims,
        batch 2 and ``default_side`` (default ``32 * max(n_win)``) for other dynamic dims.
        """
        if not self.matches:
            self.verify_skipped = "no block to check"
            return []
        self.verify_skipped = None
        side = default_side or 32 * max(m.n_win for m in self.matches)
        self._feeds = make_feeds(self.model, input_shapes, side)
        taps = [t for m in self.matches for t in (m.q.tensor.name, m.k.tensor.name, m.v.tensor.name)]
        taps += [m.indices.name for m in self.matches] + [m.output.name for m in self.matches]
        reference = bypass_qdq(self.model, [pair for m in self.matches for pair in m.internal_qdq])
        try:
            self._values = run_with_taps(reference, taps, self._feeds, self.info)
        except Exception as err:
            raise RewriteError(
                f"{self.source}: could not run the original graph in onnxruntime at input shapes "
                f"{self.input_shapes} to check the matched blocks ({_first_line(err)}). Pass --input-shape "
                "NAME:DIMS with a size the model accepts, or --no-verify"
            ) from err
        self.block_checks = check_blocks(self.matches, self._values)
        failed = {c.index: c for c in self.block_checks if not c.passed}
        for match in [m for m in self.matches if m.index in failed]:
            check = failed[match.index]
            self.partial.append(
                PartialMatch(
                    index=match.index,
                    name=match.name,
                    reason=(
                        "its structure matches, but on real activations its attention output differs from "
                        "the op's reference computed from the matched q/k/v (max relative difference "
                        f"{check.max_rel_diff:.3g} > {check.tolerance:.0e}): the block computes something "
                        f"else ({match.describe()})"
                    ),
                    stage_key=match.stage_key,
                )
            )
        self.matches = [m for m in self.matches if m.index not in failed]
        self.partial.sort(key=lambda p: p.index)
        return self.block_checks

    @property
    def input_shapes(self) -> dict[str, list[int]]:
        """Shapes of the inputs used by :meth:`check` and :meth:`verify_outputs`."""
        return {k: list(v.shape) for k, v in self._feeds.items()}

    def apply(self, *, allow_none: bool = False, skip_partial: bool = False) -> onnx.ModelProto:
        """Replace the matches; return the rewritten model (the input model if there is none)."""
        if self.partial and not skip_partial:
            raise RewriteError(_format_partial(self.partial, self.source))
        if not self.matches:
            if allow_none:
                self.rewritten = self.model
                return self.model
            if self.partial:
                raise RewriteError(
                    f"{self.source}: all {len(self.partial)} BRA block(s) match only in part, so there is "
                    f"nothing to replace ({_partial_items(self.partial)}); pass --allow-none to write the "
                    "graph unchanged"
                )
            if any(node.op_type == OP_TYPE and node.domain == OP_DOMAIN for node in self.model.graph.node):
                raise RewriteError(
                    f"{self.source} is already rewritten: it holds {OP_TYPE} plugin nodes and no routed "
                    "attention left to replace. Give the original export (edge-biformer export) instead"
                )
            raise RewriteError(
                f"{self.source}: found no BiFormer routed attention (BRA) block to replace: no TopK whose "
                "indices drive a Gather/GatherElements of keys and values into a MatMul -> Softmax -> "
                "MatMul attention. Check that this is a BiFormer graph exported from PyTorch (edge-biformer "
                "export, or torch.onnx.export of a model with BiLevelRoutingAttention), or pass "
                "--allow-none to accept a graph without BRA"
            )
        outcome = replace_blocks(self.graph, self.matches, self.info)
        rewritten = export_rewritten(self.graph, self.model)
        register_onnx_schema()
        try:
            onnx.checker.check_model(rewritten, full_check=True)
        except Exception as err:  # a bug in the rewrite, not a user error
            raise RewriteError(
                f"{self.source}: the rewritten graph fails onnx.checker ({_first_line(err)}); nothing was "
                "written. Please report this with the input graph"
            ) from err
        self.rewritten = rewritten
        self.plugin_nodes = outcome.plugin_nodes
        self.kept_alive = outcome.kept_alive
        return rewritten

    def verify_outputs(self) -> OutputCheck | None:
        """Run the rewritten graph with :func:`edge_biformer.cpu_session` on the inputs of :meth:`check`."""
        if self.rewritten is None or self.rewritten is self.model or not self._values:
            return None
        from edge_biformer.runtime.cpu import cpu_session

        expected = {o.name: self._values[o.name] for o in self.model.graph.output}
        session = cpu_session(self.rewritten)
        names = [o.name for o in session.get_outputs()]
        got = dict(zip(names, session.run(names, self._feeds), strict=True))
        reduced = any(m.elem_type == onnx.TensorProto.FLOAT16 for m in self.matches)
        tolerance = REDUCED_PRECISION_TOLERANCE if reduced else FLOAT32_TOLERANCE
        check = compare_outputs(expected, got, self.input_shapes, tolerance)
        self.output_check = check
        if not check.passed:
            raise RewriteError(
                f"{self.source}: the rewritten graph's outputs differ from the original's in onnxruntime: "
                f"max relative difference {check.max_rel_diff:.3g} > {tolerance:.0e} (max abs "
                f"{check.max_abs_diff:.3g}); nothing was written. Please report this with the input graph"
            )
        return check

    def report(self) -> RewriteReport:
        """Summary of what was found and done."""
        stage_index = _stage_index(self.matches, self.partial)
        check_of = {c.index: c for c in self.block_checks}
        replaced = self.plugin_nodes and self.rewritten is not self.model
        blocks = (
            [
                _block_record(m, stage_index[m.index], name, check_of.get(m.index))
                for m, name in zip(self.matches, self.plugin_nodes, strict=True)
            ]
            if replaced
            else []
        )
        final = self.rewritten if self.rewritten is not None else self.model
        return RewriteReport(
            input=self.source,
            output=None,
            found=len(self.matches) + len(self.partial),
            replaced=len(self.plugin_nodes),
            stages=_stage_rows(self.matches if replaced else [], self.partial, self.matches),
            blocks=blocks,
            partial=[asdict(p) for p in self.partial],
            plugin_nodes=self.plugin_nodes,
            nodes_before=self.nodes_before,
            nodes_after=len(final.graph.node),
            qdq_before=self.qdq_before,
            qdq_after=sum(1 for n in final.graph.node if n.op_type in _QDQ_OPS),
            block_checks=[c for c in self.block_checks if c.index in {m.index for m in self.matches}],
            output_check=self.output_check,
            verify_skipped=self.verify_skipped,
            kept_alive=self.kept_alive,
            seconds=time.perf_counter() - self._start,
        )


def rewrite_model(
    model: onnx.ModelProto,
    *,
    source: str = "the model",
    allow_none: bool = False,
    skip_partial: bool = False,
    verify: bool = True,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    default_side: int | None = None,
) -> tuple[onnx.ModelProto, RewriteReport]:
    """Rewrite a loaded model; see :func:`rewrite_onnx` (which also writes the result)."""
    rewriter = Rewriter(model, source=source)
    rewriter.find()
    if verify:
        rewriter.check(input_shapes, default_side)
    rewritten = rewriter.apply(allow_none=allow_none, skip_partial=skip_partial)
    if verify:
        rewriter.verify_outputs()
    return rewritten, rewriter.report()


def _stage_index(matches: Sequence[BraMatch], partial: Sequence[PartialMatch]) -> dict[int, int]:
    order = sorted([(m.index, m.stage_key) for m in matches] + [(p.index, p.stage_key) for p in partial])
    stage, previous, result = 0, None, {}
    for index, key in order:
        if stage == 0 or key != previous:
            stage += 1
            previous = key
        result[index] = stage
    return result


def rewrite_onnx(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    allow_none: bool = False,
    skip_partial: bool = False,
    verify: bool = True,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    default_side: int | None = None,
) -> RewriteReport:
    """Replace every BRA routed attention of ``input_path`` by a plugin node; write ``output_path``.

    Args:
        input_path: the ONNX graph (an export of our models or of the official BRA module).
        output_path: where to write the rewritten graph (atomically: nothing is left on failure).
        allow_none: write the graph unchanged instead of failing when it has no BRA block.
        skip_partial: keep blocks that only partly match as native ops instead of failing.
        verify: check each block on real activations and the whole rewritten graph against the
            original in onnxruntime (CPU) before writing.
        input_shapes: shapes of graph inputs for the verification run (default: static dims, batch
            2, other dynamic dims ``default_side``).
        default_side: value of dynamic non-batch dims (default ``32 * max(n_win)``).

    Raises:
        RewriteError: no BRA block (without ``allow_none``), partial matches (without
            ``skip_partial``), a failed check, or an unreadable input.
    """
    source = str(input_path)
    output_path = check_onnx_output(output_path, input_path)
    model = load_onnx(input_path)
    rewritten, report = rewrite_model(
        model,
        source=source,
        allow_none=allow_none,
        skip_partial=skip_partial,
        verify=verify,
        input_shapes=input_shapes,
        default_side=default_side,
    )
    save_onnx(rewritten, output_path, original=model, original_path=input_path)
    report.output = str(output_path)
    return report


def save_onnx(
    model: onnx.ModelProto,
    path: str | os.PathLike[str],
    *,
    original: onnx.ModelProto | None = None,
    original_path: str | os.PathLike[str] | None = None,
) -> None:
    """Write ``model`` atomically (an unchanged ``original`` is copied byte for byte)."""
    with atomic_output(path, suffix=".onnx") as tmp:
        if model is original and original_path is not None:
            Path(tmp).write_bytes(Path(original_path).read_bytes())
            return
        try:
            onnx.save(model, str(tmp))
        except ValueError as err:  # > 2 GB protobuf
            raise RewriteError(
                f"{path}: the rewritten graph is too large for one ONNX file ({err}); graphs over 2 GB are "
                "not supported"
            ) from err


def write_manifest(report: RewriteReport) -> Path:
    """Write the side-car manifest of a rewrite (JSON, atomically); return its path."""
    import onnxruntime

    assert report.output is not None
    output = Path(report.output)
    source_manifest_path = manifest_path(report.input)
    source_manifest = None
    if source_manifest_path.is_file():
        try:
            source_manifest = json.loads(source_manifest_path.read_text())
        except (OSError, json.JSONDecodeError):
            source_manifest = None
    manifest = {
        "artifact": output.name,
        "kind": "onnx",
        "stage": "rewrite",
        "source": {
            "path": report.input,
            "sha256": sha256_file(report.input),
            "manifest": source_manifest,
        },
        "plugin": {
            "op_type": OP_TYPE,
            "domain": OP_DOMAIN,
            "opset_version": OPSET_VERSION,
            "plugin_version": PLUGIN_VERSION,
            "plugin_namespace": PLUGIN_NAMESPACE,
        },
        "found": report.found,
        "replaced": report.replaced,
        "stages": [asdict(s) for s in report.stages],
        "blocks": report.blocks,
        "partial": report.partial,
        "nodes": {"before": report.nodes_before, "after": report.nodes_after},
        "qdq_nodes": {"before": report.qdq_before, "after": report.qdq_after},
        "verification": asdict(report.output_check) if report.output_check else None,
        "verification_skipped": report.verify_skipped,
        "versions": {
            "edge_biformer": __version__,
            "onnx": onnx.__version__,
            "onnx_graphsurgeon": gs.__version__,
            "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version(),
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path = manifest_path(output)
    with atomic_output(path, suffix=".json") as tmp:
        tmp.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return path
