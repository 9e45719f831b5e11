"""The Python side of the plugin library: finding, building and loading it (no TensorRT, no GPU needed),
and the consistency of the C++ identity with the op contract."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from edge_biformer import plugins
from edge_biformer.errors import EdgeBiformerError

REPO = Path(__file__).resolve().parent.parent
CONTRACT = json.loads((REPO / "plugins" / "bra" / "BiLevelRoutingAttention.json").read_text())
BUILD_SCRIPT = REPO / "scripts" / "build_plugins.sh"


@pytest.fixture
def no_library(monkeypatch, tmp_path):
    """No EDGE_BIFORMER_PLUGIN_LIB and no library in any of the default places."""
    monkeypatch.delenv(plugins.ENV_VAR, raising=False)
    monkeypatch.setattr(plugins, "candidate_paths", lambda: [tmp_path / "a" / plugins.LIBRARY_NAME])
    return tmp_path


@pytest.fixture
def fake_library(monkeypatch, tmp_path):
    """EDGE_BIFORMER_PLUGIN_LIB pointing at a file that is not a loadable library."""
    path = tmp_path / plugins.LIBRARY_NAME
    path.write_bytes(b"not an ELF file")
    monkeypatch.setenv(plugins.ENV_VAR, str(path))
    return path


def test_identity_matches_contract():
    assert CONTRACT["name"] == plugins.PLUGIN_NAME
    assert CONTRACT["version"] == plugins.PLUGIN_VERSION
    assert CONTRACT["namespace"] == plugins.PLUGIN_NAMESPACE
    header = (REPO / "plugins" / "bra" / "bra_plugin.h").read_text()
    constants = dict(re.findall(r'constexpr char const\* (kBRA_PLUGIN_\w+) = "([^"]*)";', header))
    assert constants == {
        "kBRA_PLUGIN_NAME": CONTRACT["name"],
        "kBRA_PLUGIN_VERSION": CONTRACT["version"],
        "kBRA_PLUGIN_NAMESPACE": CONTRACT["namespace"],
    }


def test_cpp_fields_match_contract_attributes():
    """The creator's fields are the contract's attributes minus the ONNX lookup keys, with its types."""
    source = (REPO / "plugins" / "bra" / "bra_plugin.cpp").read_text()
    names = dict(re.findall(r'constexpr char const\* (kFIELD_\w+) = "([^"]*)";', source))
    field_names = re.findall(
        r"mFieldNames\.emplace_back\((kFIELD_\w+), nullptr, PluginFieldType::(k\w+), 1\)", source
    )
    declared = {names[const]: kind for const, kind in field_names}
    expected = {
        a["name"]: {"int": "kINT32", "float": "kFLOAT32"}[a["type"]]
        for a in CONTRACT["attributes"]
        if a["type"] != "string"
    }
    assert declared == expected


def test_exports_map_lists_the_entry_points():
    text = (REPO / "plugins" / "bra" / "exports.map").read_text()
    exported = re.search(r"global:(.*?)local:", text, re.S).group(1)
    assert sorted(re.findall(r"(\w+);", exported)) == [
        "edge_biformer_plugin_status",
        "getCreators",
        "setLoggerFinder",
    ]


def test_library_path_from_env(fake_library):
    assert plugins.library_path() == fake_library.resolve()


def test_library_path_env_names_missing_file(monkeypatch, tmp_path):
    missing = tmp_path / "nope" / plugins.LIBRARY_NAME
    monkeypatch.setenv(plugins.ENV_VAR, str(missing))
    with pytest.raises(EdgeBiformerError) as info:
        plugins.library_path()
    message = str(info.value)
    assert plugins.ENV_VAR in message and str(missing) in message and "unset it" in message
    assert "\n" not in message


def test_library_path_not_found_says_how_to_build(no_library):
    with pytest.raises(EdgeBiformerError) as info:
        plugins.library_path()
    message = str(info.value)
    assert "scripts/build_plugins.sh" in message
    assert "--tensorrt-root" in message and "TENSORRT_ROOT" in message
    assert plugins.ENV_VAR in message and "library_path(build=True)" in message
    assert str(no_library / "a" / plugins.LIBRARY_NAME) in message
    assert "\n" not in message


def test_library_path_prefers_repository_build(monkeypatch, tmp_path):
    monkeypatch.delenv(plugins.ENV_VAR, raising=False)
    first = tmp_path / "build" / plugins.LIBRARY_NAME
    second = tmp_path / "pkg" / plugins.LIBRARY_NAME
    for path in (first, second):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
    monkeypatch.setattr(plugins, "candidate_paths", lambda: [first, second])
    assert plugins.library_path() == first


def test_default_candidates():
    paths = plugins.candidate_paths()
    assert paths[0] == REPO / "build" / "plugins" / plugins.LIBRARY_NAME
    assert paths[1] == REPO / "edge_biformer" / "lib" / plugins.LIBRARY_NAME


def test_build_failure_is_reported_with_output(no_library, monkeypatch):
    monkeypatch.delenv("TENSORRT_ROOT", raising=False)
    monkeypatch.delenv("TENSORRT_INCLUDE_DIR", raising=False)
    with pytest.raises(EdgeBiformerError) as info:
        plugins.build_library(build_dir=no_library / "b", tensorrt_root=no_library / "no-tensorrt")
    message = str(info.value)
    assert "exited with status 2" in message
    assert "NvInferRuntime.h" in message and str(no_library / "no-tensorrt") in message


def test_load_needs_tensorrt(fake_library, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` raise ImportError
    with pytest.raises(EdgeBiformerError) as info:
        plugins.load()
    message = str(info.value)
    assert "TensorRT Python package" in message and "--staticPlugins" in message


def test_load_reports_unloadable_library(fake_library, monkeypatch):
    fake_trt = types.SimpleNamespace(get_plugin_registry=lambda: None)
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt)
    with pytest.raises(EdgeBiformerError) as info:
        plugins.load()
    message = str(info.value)
    assert f"Cannot load the plugin library {fake_library}" in message and "rebuild it" in message


class _Creator:
    name = plugins.PLUGIN_NAME
    plugin_version = plugins.PLUGIN_VERSION
    plugin_namespace = plugins.PLUGIN_NAMESPACE


class _Registry:
    """The parts of tensorrt.IPluginRegistry that load() uses."""

    def __init__(self, registers: bool, handle: object = "handle"):
        self.registers = registers
        self.handle = handle
        self.loaded: list[str] = []
        self.creators: list[object] = []

    def load_library(self, path: str) -> object:
        self.loaded.append(path)
        if self.registers:
            self.creators.append(_Creator())
        return self.handle

    def get_creator(self, name: str, version: str, namespace: str) -> object | None:
        for c in self.creators:
            if (c.name, c.plugin_version, c.plugin_namespace) == (name, version, namespace):
                return c
        return None


def test_load_with_registry_uses_load_library(fake_library):
    registry = _Registry(registers=True)
    assert plugins.load(registry) == "handle"
    assert registry.loaded == [str(fake_library.resolve())]


def test_load_with_registry_reports_missing_creator(fake_library):
    registry = _Registry(registers=False, handle=None)
    with pytest.raises(EdgeBiformerError) as info:
        plugins.load(registry)
    message = str(info.value)
    assert "IPluginRegistry.load_library (returned no handle)" in message
    assert "edge_biformer::BiLevelRoutingAttention version 1" in message
    assert "Cannot load the plugin library" in message  # what the library could say about itself


def test_find_creator_without_get_creator():
    registry = types.SimpleNamespace(all_creators=[types.SimpleNamespace(name="Other"), _Creator()])
    assert isinstance(plugins.find_creator(registry), _Creator)
    assert plugins.find_creator(types.SimpleNamespace(all_creators=[])) is None


def test_build_script_help():
    proc = subprocess.run(["bash", str(BUILD_SCRIPT), "--help"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0
    for option in ("--tensorrt-root", "--cuda-architectures", "--kernels-dir", "--build-dir"):
        assert option in proc.stdout


def test_build_script_without_headers_fails_early(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENSORRT_")}
    proc = subprocess.run(
        [
            "bash",
            str(BUILD_SCRIPT),
            "--tensorrt-root",
            str(tmp_path / "none"),
            "--build-dir",
            str(tmp_path / "b"),
        ],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert proc.returncode == 2
    assert "NvInferRuntime.h" in proc.stderr and "--tensorrt-root" in proc.stderr
    assert not (tmp_path / "b").exists()  # nothing configured


def test_build_script_rejects_unknown_option(tmp_path):
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--frobnicate"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 2 and "unknown option '--frobnicate'" in proc.stderr
