"""The Python side of the plugin library: finding, building and loading it (no TensorRT, no GPU needed),
and the C++ view of the op contract (the header CMake generates from its JSON)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from edge_biformer import plugins
from edge_biformer.errors import EdgeBiformerError
from edge_biformer.ops.bra import CONTRACT

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "scripts" / "build_plugins.sh"
CONTRACT_HEADER_SCRIPT = REPO / "plugins" / "cmake" / "op_contract_header.cmake"
PRINT_CONTRACT = REPO / "plugins" / "tests" / "print_contract.cpp"
#: The TensorRT PluginFieldType of each contract attribute type.
FIELD_TYPES = {"int": "kINT32", "float": "kFLOAT32", "string": "kCHAR"}


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


def _generated_contract(tmp_path: Path) -> list[list[str]]:
    """Generate bra_contract.h from the JSON with ``cmake -P``, compile and run print_contract.cpp."""
    cmake = shutil.which("cmake")
    cxx = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
    if cmake is None or cxx is None:
        pytest.skip("needs cmake and a C++ compiler to generate and compile the contract header")
    header = tmp_path / "bra_contract.h"
    gen = subprocess.run(
        [
            cmake,
            f"-DCONTRACT={CONTRACT.path}",
            f"-DOUTPUT={header}",
            "-DPREFIX=EB_BRA",
            "-P",
            str(CONTRACT_HEADER_SCRIPT),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert gen.returncode == 0 and header.is_file(), gen.stdout + gen.stderr
    exe = tmp_path / "print_contract"
    cc = subprocess.run(
        [
            cxx,
            "-std=c++17",
            "-Wall",
            "-Wextra",
            "-Werror",
            f"-I{tmp_path}",
            str(PRINT_CONTRACT),
            "-o",
            str(exe),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert cc.returncode == 0, cc.stderr[-4000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, check=True)
    return [line.split(" ") for line in run.stdout.splitlines()]


def test_generated_cpp_contract_header_matches_contract(tmp_path):
    """The identity and plugin fields the C++ code compiles from are the contract's."""
    assert CONTRACT.name == plugins.PLUGIN_NAME
    assert CONTRACT.version == plugins.PLUGIN_VERSION
    assert CONTRACT.namespace == plugins.PLUGIN_NAMESPACE
    lines = _generated_contract(tmp_path)
    facts: dict[str, list[list[str]]] = {}
    for kind, *values in lines:
        facts.setdefault(kind, []).append(values)
    assert facts["identity"] == [[CONTRACT.name, CONTRACT.version, CONTRACT.namespace]]
    assert facts["onnx"] == [[CONTRACT.op_type, CONTRACT.domain, str(CONTRACT.opset_version)]]
    assert facts["tensors"] == [[str(len(CONTRACT.inputs)), str(len(CONTRACT.outputs))]]
    # The creator's fields are the contract's plugin fields (the attributes minus the ONNX lookup keys),
    # in order, with their types; both the X-macro list and the per-attribute macros say so.
    expected_fields = [[a.name, FIELD_TYPES[a.type]] for a in CONTRACT.plugin_fields]
    assert [f[:2] for f in facts["field"]] == expected_fields
    assert [f[2:] for f in facts["field"]] == expected_fields
    assert expected_fields == [
        [a.name, FIELD_TYPES[a.type]] for a in CONTRACT.attributes if a.type != "string"
    ]
    expected_fixed = [[name, value] for name, value in CONTRACT.fixed_attributes.items()]
    assert [f[:2] for f in facts.get("fixed", [])] == expected_fixed
    assert [f[2:] for f in facts.get("fixed", [])] == expected_fixed
    assert CONTRACT.fixed_attributes == {
        "plugin_version": CONTRACT.version,
        "plugin_namespace": CONTRACT.namespace,
    }
    assert facts["counts"] == [[str(len(expected_fields)), str(len(expected_fixed))]]


def test_cpp_sources_take_identity_and_fields_from_the_contract_header():
    """No C/C++ file of plugins/ spells the identity or a field name as a string of its own."""
    literals = {f'"{v}"' for v in (CONTRACT.name, CONTRACT.namespace)}
    literals |= {f'"{a.name}"' for a in CONTRACT.attributes}
    offenders = []
    for path in sorted((REPO / "plugins").rglob("*")):
        if path.suffix in (".c", ".cpp", ".h") and path.is_file():
            text = path.read_text()
            offenders += [f"{path.relative_to(REPO)}: {lit}" for lit in literals if lit in text]
    assert not offenders, offenders


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


def test_readme_parameters_are_the_contract_fields():
    """plugins/bra/README.md, Parameters: the plugin fields and fixed attributes the contract declares."""
    text = (REPO / "plugins" / "bra" / "README.md").read_text()
    section = text[text.index("## Parameters") :]
    section = section[: section.index("\n## ", 1)]
    rows = re.findall(r"^\| `(\w+)` \| (.+?) \|", section, re.M)
    names = [name for name, _ in rows]
    assert names == [a.name for a in CONTRACT.plugin_fields] + list(CONTRACT.fixed_attributes)
    types = dict(rows)
    for a in CONTRACT.plugin_fields:
        assert f"(`{FIELD_TYPES[a.type]}`)" in types[a.name], a.name
    for name, value in CONTRACT.fixed_attributes.items():
        assert types[name] == f'`"{value}"`', name
