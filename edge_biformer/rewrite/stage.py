"""The rewrite stage: load, match, check, rewrite, verify and write a graph.

:func:`run` is what ``edge-biformer rewrite`` and ``edge-biformer build`` run; it prints one line per
step. :class:`Rewriter` holds the steps for callers that drive them one by one, and
:func:`rewrite_model` runs them on a graph in memory.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import onnx
import onnx_graphsurgeon as gs

from edge_biformer import manifest as manifests
from edge_biformer.check.finite import require_finite_initializers
from edge_biformer.errors import EdgeBiformerError
from edge_biformer.onnx_io import graph_precision, load_model, save_model
from edge_biformer.ops.bra import CONTRACT
from edge_biformer.rewrite.checks import (
    BlockCheck,
    GraphCheck,
    bypass_fake_quant,
    bypass_qdq,
    check_blocks,
    check_graph,
    exercise_feeds,
    make_feeds,
    override_tensors,
    run_with_taps,
)
from edge_biformer.rewrite.graph import GraphInfo
from edge_biformer.rewrite.match import BraMatch, MatchResult, PartialMatch, find_bra_blocks
from edge_biformer.rewrite.replace import export_rewritten, replace_blocks
from edge_biformer.rewrite.report import (
    RewriteReport,
    block_record,
    print_stage_table,
    stage_index,
    stage_rows,
)
from edge_biformer.utils import atomic_output, check_onnx_output, log, stage

__all__ = [
    "RewriteError",
    "RewriteOptions",
    "Rewriter",
    "analyse_model",
    "load_onnx",
    "rewrite_model",
    "rewrite_onnx",
    "run",
]

_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


class RewriteError(EdgeBiformerError):
    """A graph that cannot be rewritten as asked (no BRA, partial matches, failed verification)."""


@dataclass
class RewriteOptions:
    """The rewrite of ``source`` into ``output``.

    ``allow_none``: write the graph unchanged instead of failing when it has no BRA block;
    ``skip_partial``: keep blocks that only partly match as native ops instead of failing;
    ``verify``: check each block on real activations and the whole rewritten graph against the
    original in onnxruntime before writing; ``input_shapes``: shapes of graph inputs for those
    checks (default: static dims, batch 2, other dynamic dims ``default_side``, itself
    ``32 * max(n_win)`` by default).
    """

    source: Path | None = None
    output: Path | None = None
    allow_none: bool = False
    skip_partial: bool = False
    verify: bool = True
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    default_side: int | None = None


def load_onnx(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Load an ONNX file, with one clear error for missing, empty, truncated or non-ONNX files."""
    return load_model(path, error=RewriteError)


def analyse_model(model: onnx.ModelProto) -> tuple[gs.Graph, GraphInfo, MatchResult]:
    """Import ``model`` into onnx-graphsurgeon and find its BRA blocks (the model is not changed)."""
    info = GraphInfo.from_model(model)
    graph = gs.import_onnx(model)
    graph.toposort()
    return graph, info, find_bra_blocks(graph, info)


def _partial_items(partial: Sequence[PartialMatch]) -> str:
    return "; ".join(f"block {p.index} ({p.name}): {p.reason}" for p in partial)


def _format_partial(partial: Sequence[PartialMatch], source: str) -> str:
    return (
        f"{source}: {len(partial)} BRA block(s) match only in part and cannot become "
        f"{CONTRACT.op_type} nodes: {_partial_items(partial)}. Export the model with the supported "
        "configuration (hard routing, kv_downsample_mode='identity'), or pass --skip-partial to replace "
        "the other blocks and keep these as native ONNX ops"
    )


class Rewriter:
    """The rewrite as separate steps (:func:`run` logs one line per step; :func:`rewrite_model` runs all).

    Steps, in order: :meth:`find`, :meth:`check` (optional), :meth:`apply` (raises on partial
    matches or no match), :meth:`verify_outputs` (optional), then :meth:`report`.
    """

    def __init__(self, model: onnx.ModelProto, *, source: str = "the model") -> None:
        self.model = model
        self.source = source
        self.matches: list[BraMatch] = []
        self.partial: list[PartialMatch] = []
        self.block_checks: list[BlockCheck] = []
        self.output_check: GraphCheck | None = None
        self.verify_skipped: str | None = "--no-verify"
        self.rewritten: onnx.ModelProto | None = None
        self.plugin_nodes: list[str] = []
        self.kept_alive: list[str] = []
        self._feeds: dict[str, Any] = {}
        self._values: dict[str, Any] = {}
        self._exercise: dict[str, Any] = {}
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
        self, input_shapes: Mapping[str, Sequence[int]] | None = None, default_side: int | None = None
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
        # Again with q/k/v overridden by random values: real activations may not exercise an attention.
        fed = {o for n in self.model.graph.node for o in n.output} | {i.name for i in self.model.graph.input}
        sources = [n for m in self.matches for n in (m.q.tensor.name, m.k.tensor.name, m.v.tensor.name)]
        sources = [n for n in sources if n in fed]  # not constants
        self._exercise = exercise_feeds(self._values, sources)
        try:
            exercised = run_with_taps(
                override_tensors(reference, self._exercise),
                taps,
                {**self._feeds, **self._exercise},
                self.info,
            )
        except Exception as err:
            raise RewriteError(
                f"{self.source}: could not run the original graph in onnxruntime with the matched q/k/v "
                f"overridden by random values ({_first_line(err)}). Please report this with the input graph"
            ) from err
        for check, again in zip(self.block_checks, check_blocks(self.matches, exercised), strict=True):
            check.exercised = again
        failed = {c.index: c for c in self.block_checks if not c.passed}
        for match in [m for m in self.matches if m.index in failed]:
            check = failed[match.index]
            if not check.comparison.passed or check.exercised is None:
                where, rel = "on real activations", check.max_rel_diff
            else:
                where, rel = "with random q/k/v in place of the real ones", check.exercised.max_rel_diff
            self.partial.append(
                PartialMatch(
                    index=match.index,
                    name=match.name,
                    reason=(
                        f"its structure matches, but {where} its attention output differs from the op's "
                        "reference computed from the matched q/k/v (max relative difference "
                        f"{rel:.3g} > {check.tolerance:.0e}): the block computes something else "
                        f"({match.describe()})"
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
            if any(CONTRACT.is_node(node) for node in self.model.graph.node):
                raise RewriteError(
                    f"{self.source} is already rewritten: it holds {CONTRACT.op_type} plugin nodes and no "
                    "routed attention left to replace. Give the original export (edge-biformer export) "
                    "instead"
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
        CONTRACT.register_onnx_schema()
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

    def verify_outputs(self) -> GraphCheck | None:
        """Run the rewritten graph with :func:`edge_biformer.cpu_session` on the inputs of :meth:`check`.

        Judged output by output, and every replaced attention's output in place (the plugin node's
        output keeps the attention output's name), each against its own range: a detection graph
        whose outputs barely depend on one attention still fails on a wrong node. A graph with Q/DQ
        pairs is judged with fake quantization off on both sides (see
        :class:`~edge_biformer.rewrite.checks.GraphCheck`); the comparison with it on is recorded.
        """
        if self.rewritten is None or self.rewritten is self.model or not self._values:
            return None
        outputs = [o.name for o in self.model.graph.output]
        labels = {m.output.name: f"block {m.index} ({m.name}) attention output" for m in self.matches}
        names = list(dict.fromkeys([*outputs, *labels]))
        expected = {name: self._values[name] for name in names}
        got = self._run_rewritten(self.rewritten, names)
        reduced = any(m.elem_type == onnx.TensorProto.FLOAT16 for m in self.matches)
        original_float, pairs = bypass_fake_quant(self.model)
        if pairs:
            rewritten_float, _ = bypass_fake_quant(self.rewritten)
            float_expected = run_with_taps(original_float, names, self._feeds, self.info)
            float_got = self._run_rewritten(rewritten_float, names)
            check = check_graph(
                {n: float_expected[n] for n in names},
                float_got,
                self.input_shapes,
                reduced,
                fake_quant_bypassed=pairs,
                quantized=({n: expected[n] for n in outputs}, {n: got[n] for n in outputs}),
                labels=labels,
            )
        else:
            check = check_graph(expected, got, self.input_shapes, reduced, labels=labels)
        if self._exercise:  # the same with the matched q/k/v overridden by random values
            original, rewritten = (original_float, rewritten_float) if pairs else (self.model, self.rewritten)
            feeds = {**self._feeds, **self._exercise}
            want = run_with_taps(override_tensors(original, self._exercise), names, feeds, self.info)
            have = self._run_rewritten(override_tensors(rewritten, self._exercise), names, feeds)
            check.exercised = check_graph(
                {n: want[n] for n in names}, have, self.input_shapes, reduced, labels=labels
            ).comparison
        self.output_check = check
        if not check.passed:
            failures = list(check.comparison.failures)
            if check.exercised is not None:
                failures += [f"with random q/k/v: {f}" for f in check.exercised.failures]
            raise RewriteError(
                f"{self.source}: the rewritten graph's outputs differ from the original's in onnxruntime "
                f"(graph outputs and replaced attention outputs, each on its own range): "
                f"{'; '.join(failures)}; nothing was written. Please report this with the input graph"
            )
        return check

    def _run_rewritten(
        self, model: onnx.ModelProto, names: list[str], feeds: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Run ``model`` with :func:`edge_biformer.cpu_session`, ``names`` (outputs or inner tensors) out."""
        from edge_biformer.runtime.cpu import cpu_session

        present = {o.name for o in model.graph.output}
        extra = [n for n in names if n not in present]
        if extra:
            tapped = onnx.ModelProto()
            tapped.CopyFrom(model)
            for name in extra:
                elem_type = self.info.elem_types.get(name, onnx.TensorProto.UNDEFINED)
                tapped.graph.output.append(onnx.helper.make_tensor_value_info(name, elem_type, None))
            model = tapped
        values = cpu_session(model).run(names, dict(self._feeds if feeds is None else feeds))
        return dict(zip(names, values, strict=True))

    def report(self) -> RewriteReport:
        """Summary of what was found and done."""
        stages = stage_index(self.matches, self.partial)
        check_of = {c.index: c for c in self.block_checks}
        replaced = bool(self.plugin_nodes) and self.rewritten is not self.model
        blocks = (
            [
                block_record(m, stages[m.index], name, check_of.get(m.index))
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
            stages=stage_rows(self.matches if replaced else [], self.partial, self.matches),
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
            precision=graph_precision(final),
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
    """Rewrite a loaded model (nothing is written or printed); see :class:`RewriteOptions`."""
    rewriter = Rewriter(model, source=source)
    rewriter.find()
    if verify:
        rewriter.check(input_shapes, default_side)
    rewritten = rewriter.apply(allow_none=allow_none, skip_partial=skip_partial)
    if verify:
        rewriter.verify_outputs()
    return rewritten, rewriter.report()


def _manifest(report: RewriteReport, options: RewriteOptions, source: dict[str, Any]) -> dict[str, Any]:
    return manifests.make_manifest(
        report.output or options.output,
        kind="onnx",
        stage="rewrite",
        source=source,
        options=options,
        graph="plugin" if report.replaced else None,
        precision=report.precision,
        plugin={
            "op_type": CONTRACT.op_type,
            "domain": CONTRACT.domain,
            "opset_version": CONTRACT.opset_version,
            "plugin_version": CONTRACT.version,
            "plugin_namespace": CONTRACT.namespace,
        },
        found=report.found,
        replaced=report.replaced,
        stages=[asdict(s) for s in report.stages],
        blocks=report.blocks,
        partial=report.partial,
        nodes={"before": report.nodes_before, "after": report.nodes_after},
        qdq_nodes={"before": report.qdq_before, "after": report.qdq_after},
        verification=report.output_check.to_dict() if report.output_check else None,
        verification_skipped=report.verify_skipped,
    )


def run(options: RewriteOptions) -> RewriteReport:
    """Rewrite ``options.source`` into ``options.output``, one log line per step, and its manifest.

    Raises:
        RewriteError: no BRA block (without ``allow_none``), partial matches (without
            ``skip_partial``), a failed check, or an unreadable input. Nothing is written then.
    """
    if options.source is None or options.output is None:
        raise ValueError("the rewrite stage needs options.source and options.output")
    source, output = Path(options.source), check_onnx_output(options.output, options.source)
    with stage("load onnx") as st:
        model = load_onnx(source)
        require_finite_initializers(model, source, RewriteError)  # NaN weights "match" NaN outputs
        st.output = source
        st.details.append(f"{len(model.graph.node)} nodes")
    with stage("find bra blocks") as st:
        rewriter = Rewriter(model, source=str(source))
        result = rewriter.find()
        st.details.append(f"{len(result.matches)} matched, {len(result.partial)} partial")
    if not options.verify and rewriter.matches:
        log(
            "warning: --no-verify: the blocks are replaced on their structure alone; a layout the matcher "
            "misreads (e.g. tokens reordered inside a region by layout ops alone) would go unnoticed. "
            "Check the result with edge_biformer.cpu_session against the original graph"
        )
    if options.verify and rewriter.matches:
        with stage("check blocks") as st:
            checks = rewriter.check(options.input_shapes, options.default_side)
            worst = max((c.max_rel_diff for c in checks), default=0.0)
            st.details.append(
                f"{sum(c.passed for c in checks)}/{len(checks)} blocks equal the op reference (max rel diff "
                f"{worst:.2e}) at {rewriter.input_shapes}"
            )
        for check in (c for c in checks if c.passed and c.inconclusive):
            log(
                f"warning: the check of block {check.index} is inconclusive: on these inputs the op with "
                f"keys paired with the wrong values is as close to the original (max rel diff "
                f"{check.wrong_pairing:.2e}) as the right pairing, i.e. the attention is near-uniform here; "
                "the whole-graph check still compares every attention output in place; other input "
                "shapes (--input-shape) may exercise the attention more"
            )
    try:
        with stage("rewrite") as st:
            rewritten = rewriter.apply(allow_none=options.allow_none, skip_partial=options.skip_partial)
            report = rewriter.report()
            st.details.append(
                f"{report.replaced} plugin nodes, nodes {report.nodes_before} -> {report.nodes_after}, "
                f"Q/DQ {report.qdq_before} -> {report.qdq_after}"
            )
    except RewriteError:
        print_stage_table(rewriter.report())
        raise
    if options.verify and rewriter.plugin_nodes:
        with stage("verify (cpu_session)") as st:
            check = rewriter.verify_outputs()
            if check is not None:
                st.details.append(f"outputs vs original: {check.describe()}")
    report = rewriter.report()
    print_stage_table(report)
    for partial in report.partial:
        log(f"kept as native ops: block {partial['index']} ({partial['name']}): {partial['reason']}")
    for alive in report.kept_alive:
        log(f"note: the old routed gather of {alive} is still used elsewhere and was kept")
    report.output = str(output)
    record = _manifest(report, options, manifests.source_record(source))
    with stage("write onnx") as st:
        if rewritten is model:  # no block to replace (--allow-none): the input, byte for byte
            with atomic_output(output, suffix=".onnx") as tmp:
                tmp.write_bytes(source.read_bytes())
        else:
            save_model(rewritten, output, provenance=manifests.provenance(record), error=RewriteError)
        st.output = output
    report.manifest = str(manifests.write_manifest(manifests.manifest_path(output), record))
    log(f"manifest -> {report.manifest}")
    return report


def rewrite_onnx(
    input_path: str | os.PathLike[str], output_path: str | os.PathLike[str], **options: Any
) -> RewriteReport:
    """Replace every BRA routed attention of ``input_path`` by a plugin node; write ``output_path``.

    The Python form of ``edge-biformer rewrite``: ``options`` are the fields of :class:`RewriteOptions`.
    """
    shapes = options.pop("input_shapes", None) or {}
    return run(RewriteOptions(Path(input_path), Path(output_path), input_shapes=dict(shapes), **options))
