"""The table of stages and precisions drives the pipeline, the CLI, the checks and the docs."""

from __future__ import annotations

import importlib

from edge_biformer import stages
from edge_biformer.check import TOLERANCES
from edge_biformer.cli.main import build_parser
from tests.conftest import REPO_ROOT


def test_every_stage_is_a_module_with_one_run() -> None:
    assert [s.name for s in stages.STAGES] == ["export", "quantize", "rewrite", "engine", "check"]
    for s in stages.STAGES:
        module = importlib.import_module(s.module)
        assert callable(module.run), s.module
        assert s.command.startswith("edge-biformer ")


def test_plans() -> None:
    names = lambda plan: [s.name for s in plan]  # noqa: E731
    assert names(stages.plan("fp32", None)) == ["export", "rewrite", "engine", "check"]
    assert names(stages.plan("int8", None)) == ["export", "quantize", "rewrite", "engine", "check"]
    assert names(stages.plan("int8", None, quantize=False)) == ["export", "rewrite", "engine", "check"]
    assert names(stages.plan("fp16", "plain")) == ["quantize", "rewrite", "engine", "check"]
    assert names(stages.plan("int8", "qdq", check=False)) == ["rewrite", "engine"]
    assert names(stages.plan("fp16", "plugin", rewrite=False)) == ["engine", "check"]
    assert stages.artifact_name("rewrite", "fp16") == "model.fp16.plugin.onnx"


def test_precisions_name_their_tolerances_and_the_cli_offers_them() -> None:
    for p in stages.PRECISIONS.values():
        assert p.tolerance in TOLERANCES and p.graph in ("plain", "fp16", "qdq")
    parser = build_parser()
    build = parser._subparsers._group_actions[0].choices["build"]  # argparse keeps subcommands here
    precision = next(a for a in build._actions if a.dest == "precision")
    assert tuple(precision.choices) == tuple(stages.PRECISIONS)


def test_docs_show_the_table() -> None:
    text = (REPO_ROOT / "docs" / "architecture.md").read_text()
    assert stages.markdown() in text, "docs/architecture.md: paste `python -m edge_biformer.stages` there"
