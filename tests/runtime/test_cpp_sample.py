"""``samples/cpp/classify`` compiles and links against the real TensorRT headers (10.x and 11.x).

Needs TensorRT headers: ``TENSORRT_INCLUDE_DIRS`` (several include directories separated by ``:``) and/or
``TENSORRT_INCLUDE_DIR``, as for tests/plugins/test_plugin_build.py; skipped where none are configured.
Without libnvinfer (this machine, CI) the sample links the stub of ``classify/nvinfer_stub.cpp``: the
binary then runs up to ``createInferRuntime`` and must report that failure in one line, exit status 1.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def _include_dirs() -> list[str]:
    found: list[str] = []
    for value in (
        *os.environ.get("TENSORRT_INCLUDE_DIRS", "").split(os.pathsep),
        os.environ.get("TENSORRT_INCLUDE_DIR"),
    ):
        if value and value not in found:
            found.append(value)
    return found


def _major(include: Path) -> int:
    text = (include / "NvInferVersion.h").read_text()
    match = re.search(r"#define TRT_MAJOR_ENTERPRISE (\d+)", text) or re.search(
        r"#define NV_TENSORRT_MAJOR (\d+)", text
    )
    assert match, f"cannot read the TensorRT version in {include}"
    return int(match.group(1))


@pytest.fixture(params=_include_dirs() or [None], ids=lambda v: Path(v).parent.name if v else "none")
def include_dir(request) -> Path:
    if not request.param:
        pytest.skip("TENSORRT_INCLUDE_DIR(S) is not set: compiling the C++ sample needs the TensorRT headers")
    path = Path(request.param)
    if not (path / "NvInferRuntime.h").is_file():
        pytest.fail(f"{path} holds no NvInferRuntime.h; point TENSORRT_INCLUDE_DIR(S) at TensorRT's include/")
    if shutil.which("cmake") is None:
        pytest.fail("TensorRT headers are given but cmake is not installed")
    if _major(path) < 10:
        pytest.skip(f"TensorRT {_major(path)} headers: the sample uses the TensorRT >= 10 API")
    return path


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    return proc


def _check_binary(binary: Path, tmp_path: Path) -> None:
    """Usage error without arguments; a one-line error (exit 1) for a file that is not a plan."""
    proc = subprocess.run([str(binary)], capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "usage:" in proc.stderr
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not a plan")
    proc = subprocess.run([str(binary), str(engine), str(tmp_path / "x.npy")], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("classify: error:"), proc.stderr
    if (binary.parent / "libnvinfer_stub.so").is_file():  # linked against the stub: stops at the runtime
        assert (
            proc.stderr.strip()
            == "classify: error: createInferRuntime failed (see the TensorRT messages above)"
        )


def test_classify_sample_compiles_and_links(include_dir, tmp_path):
    build = tmp_path / "build"
    _run(
        [
            "cmake",
            "-S",
            str(REPO / "samples" / "cpp"),
            "-B",
            str(build),
            f"-DTENSORRT_INCLUDE_DIR={include_dir}",
        ]
    )
    _run(["cmake", "--build", str(build), "--parallel", "2"])
    _check_binary(build / "classify", tmp_path)


def test_plugin_build_option_builds_the_sample(include_dir, tmp_path):
    build = tmp_path / "build"
    _run(
        ["cmake", "-S", str(REPO / "plugins"), "-B", str(build), f"-DTENSORRT_INCLUDE_DIR={include_dir}",
         "-DEB_BUILD_LIBRARY=OFF", "-DEB_BUILD_SAMPLES=OFF", "-DEB_BUILD_APP_SAMPLES=ON"]
    )  # fmt: skip
    _run(["cmake", "--build", str(build), "--parallel", "2", "--target", "classify"])
    assert (build / "samples_cpp" / "classify").is_file()


def _parse_top(stdout: str) -> list[list[int]]:
    """``input N:  <class> <label> <p> ...`` lines (run without --labels: the label is empty)."""
    rows = []
    for line in stdout.splitlines():
        if line.startswith("input "):
            tokens = line.split(":", 1)[1].split()
            rows.append([int(t) for t in tokens[0::2]])
    return rows


@pytest.mark.tensorrt
def test_classify_top5_equals_the_python_engine(tmp_path):
    """On a GPU with a TensorRT installation (TENSORRT_ROOT with include/ and lib/) and a build folder
    (EDGE_BIFORMER_TEST_BUILD): the C++ sample and :class:`edge_biformer.runtime.Engine` give the same
    top-5 on the same preprocessed inputs (``predict --save-input``'s .npy)."""
    import numpy as np

    from edge_biformer.engine.tensorrt import missing_reason

    if missing_reason():
        pytest.skip(missing_reason())
    root = Path(os.environ.get("TENSORRT_ROOT", ""))
    if not root.name or not (root / "include" / "NvInferRuntime.h").is_file():
        pytest.skip("set TENSORRT_ROOT to a TensorRT installation (include/, lib/) to link the C++ sample")
    build_dir = Path(os.environ.get("EDGE_BIFORMER_TEST_BUILD", ""))
    engines = sorted(build_dir.glob("model.*.engine")) if build_dir.name else []
    if not engines:
        pytest.skip("set EDGE_BIFORMER_TEST_BUILD to a build folder holding an engine (built on this GPU)")
    from edge_biformer.calib import demo_photos
    from edge_biformer.runtime import Engine, Preprocessing

    cmake_build = tmp_path / "build"
    _run(["cmake", "-S", str(REPO / "samples" / "cpp"), "-B", str(cmake_build), f"-DTENSORRT_ROOT={root}"])
    _run(["cmake", "--build", str(cmake_build), "--parallel", "4"])
    assert not (cmake_build / "libnvinfer_stub.so").exists(), "linked the stub, not libnvinfer"
    for engine_path in engines:
        with Engine(engine_path) as engine:
            batch = min(engine.max_batch, 4)
            prep = Preprocessing(engine.image_size)
            x = np.stack([prep(Image.open(p)) for p in demo_photos()[:batch]])
            npy = tmp_path / "inputs.npy"
            np.save(npy, x)
            expected = np.argsort(-engine.run(x), axis=1, kind="stable")[:, :5]
        library = ["--plugin", str(engine.plugin_library)] if engine.plugin_library else []
        proc = _run([str(cmake_build / "classify"), str(engine_path), str(npy), *library, "--top-k", "5"])
        assert _parse_top(proc.stdout) == expected.tolist(), proc.stdout


def test_parse_top_reads_the_sample_output():
    out = "input 0:  3  0.91  1  0.05  7  0.01\ninput 1:  2  0.5  0  0.2  9  0.1\n"
    assert _parse_top(out) == [[3, 1, 7], [2, 0, 9]]
