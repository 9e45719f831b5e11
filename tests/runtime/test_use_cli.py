"""``edge-biformer predict``, ``bench`` and ``doctor`` as a user runs them (here: no GPU, no TensorRT)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_biformer.cli.main import main
from edge_biformer.runtime import doctor
from tests.reduced_model import arch_args


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_biformer.cli.main", *args], capture_output=True, text=True, check=False
    )


@pytest.fixture(scope="module")
def mixed_folder(reduced, tmp_path_factory) -> Path:
    """Good images in a folder tree with a corrupt JPEG, a truncated PNG and a text file."""
    folder = tmp_path_factory.mktemp("mixed")
    files = reduced.image_files()
    for f in files[:3]:
        shutil.copy(f, folder / f"{f.parent.name}_{f.name}")
    (folder / "sub").mkdir()
    shutil.copy(files[5], folder / "sub" / "good.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (folder / "sub" / "truncated.png").write_bytes(files[6].read_bytes()[:200])
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_predict_folder_with_bad_files(reduced, mixed_folder, tmp_path):
    out_json = tmp_path / "predictions.json"
    npy = tmp_path / "inputs.npy"
    proc = _cli(
        "predict", "--onnx", str(reduced.onnx), str(mixed_folder), str(tmp_path / "missing.png"),
        "--json", str(out_json), "--top-k", "3", "--save-input", str(npy),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "skipped" in proc.stdout and "broken.jpg: not a readable image" in proc.stdout
    assert "truncated.png: not a readable image" in proc.stdout
    assert "missing.png: no such file or folder" in proc.stdout
    assert "predicted 4 of 6 images" in proc.stdout and "1 non-image files ignored" in proc.stdout
    assert "RANDOM WEIGHTS" not in proc.stdout  # a trained checkpoint
    assert f"edge-biformer serve-repo --onnx {reduced.onnx} --output model_repository" in proc.stdout
    report = json.loads(out_json.read_text())
    assert report["backend"] == "onnxruntime" and report["labels"].startswith("checkpoint")
    assert len(report["predictions"]) == 4 and len(report["skipped"]) == 3
    assert all(len(p["top"]) == 3 for p in report["predictions"])
    for p in report["predictions"]:  # the reduced model is 99.8 % accurate; the names are its classes
        assert p["top"][0]["label"] in reduced.classes
    good = next(p for p in report["predictions"] if p["source"].endswith("good.png"))
    expected_class = reduced.classes[int(reduced.image_files()[5].parent.name.split("_")[0])]
    assert good["top"][0]["label"] == expected_class
    tensors = np.load(npy)
    assert tensors.shape == (4, 3, 48, 48) and tensors.dtype == np.float32


def test_predict_default_demo_photos_and_errors(reduced, tmp_path, capsys):
    assert main(["predict", "--onnx", str(reduced.onnx), "--json", "-"]) == 0
    out = capsys.readouterr().out
    assert "built-in demo photographs" in out
    data = json.loads(out[out.index("{\n") :])
    assert len(data["predictions"]) == 16
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    proc = _cli("predict", "--onnx", str(reduced.onnx), str(bad))
    assert proc.returncode == 2 and "none of the 1 images could be read" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = _cli("predict", "--onnx", str(tmp_path / "none.onnx"), str(bad))
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_bench_cpu_rows(reduced, tmp_path):
    out = tmp_path / "bench.json"
    md = tmp_path / "bench.md"
    code = main(
        ["bench", "--model", "biformer_tiny", *arch_args(), "--img-size", "48", "--onnx", str(reduced.onnx),
         "--batch", "1,2", "--warmup", "1", "--iters", "3", "--json", str(out), "--markdown", str(md)]
    )  # fmt: skip
    assert code == 0
    data = json.loads(out.read_text())
    rows = data["rows"]
    names = {r["runtime"] for r in rows}
    assert {"pytorch eager (biformer_tiny)", "onnxruntime cpu: our export (index gather)"} <= names
    assert any("official gather" in n for n in names) and "onnxruntime cpu: reduced.onnx" in names
    timed = [r for r in rows if r["skipped"] is None]
    assert len(timed) == 8 and {r["batch"] for r in timed} == {1, 2}
    for r in timed:
        assert r["iterations"] == 3 and 0 < r["p50_ms"] <= r["p99_ms"] and r["throughput"] > 0
        assert r["mean_ms"] == pytest.approx(r["batch"] / r["throughput"] * 1e3)
    trt = [r for r in rows if r["runtime"] == "tensorrt"]
    assert trt and all(r["skipped"] for r in trt)  # here: TensorRT is absent, and says so
    text = md.read_text()
    assert "| runtime | precision | batch | mean ms" in text and "Skipped:" in text
    assert data["machine"]["cores"] >= 1 and data["machine"]["versions"]["onnxruntime"]


def test_bench_needs_something_to_run():
    proc = _cli("bench")
    assert proc.returncode == 2 and "bench needs --model" in proc.stderr


def test_doctor_here(tmp_path):
    out = tmp_path / "doctor.json"
    proc = _cli("doctor", "--json", str(out))
    data = json.loads(out.read_text())
    by_name = {c["name"]: c for c in data["checks"]}
    assert by_name["python"]["status"] == "PASS" and by_name["torch"]["status"] == "PASS"
    assert by_name["jetson"]["status"] == "PASS"
    from edge_biformer.engine.tensorrt import tensorrt_available

    if not tensorrt_available():
        assert by_name["tensorrt"]["status"] == "WARN" and "pip install" in by_name["tensorrt"]["fix"]
    assert proc.returncode == (0 if data["passed"] else 1)
    assert "doctor:" in proc.stdout and "PASS" in proc.stdout


def test_doctor_checks_fail_with_a_fix(tmp_path):
    failing = doctor.check_packages(["numpy<1.0", "surely-not-installed-pkg>=1"])
    assert [c.status for c in failing] == ["FAIL", "FAIL"]
    assert failing[0].fix == "pip install 'numpy<1.0'" and "not installed" in failing[1].detail
    assert doctor.check_python((3, 8, 0)).status == "FAIL"
    assert doctor.check_tensorrt((9, 0, 0), present=True).status == "FAIL"
    assert doctor.check_tensorrt((10, 3, 0), present=True).detail.endswith("(plugin interface IPluginV3)")
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R36 (release), REVISION: 3.0, GCID: 1, BOARD: generic, EABI: aarch64\n")
    jetson = doctor.check_jetson(release, tmp_path / "no-dpkg")
    assert jetson.status == "PASS" and "JetPack 6.0" in jetson.detail and "TensorRT 8.6.2" in jetson.detail
    assert "IPluginV2DynamicExt" in jetson.detail
    cuda = doctor.check_cuda(lambda: (12060, 12080, "test"), lambda: [("Orin", (8, 7))])
    assert cuda[0].status == "FAIL" and cuda[1].status == "PASS" and "sm_87" in cuda[1].detail


def _cubin_header(sm: int) -> bytes:
    """The first 64 bytes of a CUDA 12.8+ cubin for ``sm`` (ELF ABI version 8: SM in e_flags bits 8-15)."""
    import struct

    header = bytearray(64)
    header[:4] = b"\x7fELF"
    header[4], header[7], header[8] = 2, 0x41, 8
    struct.pack_into("<H", header, 18, 190)
    struct.pack_into("<I", header, 48, 0x6000004 | (sm << 8))
    return bytes(header)


def test_plugin_library_kernel_and_tensorrt_checks(tmp_path):
    library = tmp_path / "libedge_biformer_plugins.so"
    data = (
        b"\x7fELF"
        + b"\0" * 60
        + b"built against TensorRT 10.3.0 headers"
        + _cubin_header(87)
        + _cubin_header(90)
    )
    library.write_bytes(data + b".version 8.4\n.target sm_90\n")
    assert doctor.library_archs(library.read_bytes()) == ({87, 90}, {90})
    checks = doctor.check_plugin_library(library, (10, 9, 0), [(8, 7), (8, 9), (10, 0)])
    assert [c.status for c in checks] == ["PASS", "PASS", "PASS", "FAIL", "WARN"]
    mismatch = doctor.check_plugin_library(library, (11, 1, 0), [])
    assert mismatch[1].status == "FAIL" and "rebuild" in mismatch[1].fix


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed: no real cubin to scan")
def test_library_archs_reads_real_cubins(tmp_path):
    source = tmp_path / "k.cu"
    source.write_text("__global__ void k(float* x) { x[0] = 1.0f; }\n")
    blob = b"\x7fELF" + b"\0" * 60
    for sm in (75, 87):
        cubin = tmp_path / f"k{sm}.cubin"
        subprocess.run(["nvcc", "-cubin", f"-arch=sm_{sm}", "-o", str(cubin), str(source)], check=True)
        blob += cubin.read_bytes()
    assert doctor.library_archs(blob)[0] == {75, 87}


def test_doctor_reads_gpus_from_the_driver_without_cuda_torch():
    """A CPU build of torch beside TensorRT: the GPUs come from the CUDA driver API."""

    names = {0: b"NVIDIA H200", 1: b"Orin"}
    caps = {0: (9, 0), 1: (8, 7)}

    class FakeDriver:
        def cuInit(self, flags):
            return 0

        def cuDeviceGetCount(self, ref):
            ref._obj.value = 2
            return 0

        def cuDeviceGet(self, ref, i):
            ref._obj.value = i
            return 0

        def cuDeviceGetName(self, buf, size, device):
            buf.value = names[device.value]
            return 0

        def cuDeviceGetAttribute(self, ref, attribute, device):
            ref._obj.value = caps[device.value][0 if attribute == 75 else 1]
            return 0

    assert doctor._driver_gpus(FakeDriver()) == [("NVIDIA H200", (9, 0)), ("Orin", (8, 7))]

    class NoDevice(FakeDriver):
        def cuInit(self, flags):
            return 100  # CUDA_ERROR_NO_DEVICE

    assert doctor._driver_gpus(NoDevice()) == []


def test_bench_skips_batches_a_static_graph_cannot_take():
    from edge_biformer.cli.bench_cmd import Runner

    static = Runner("onnxruntime cpu: b1.onnx", "fp32", run=lambda x: x, batches=(1, 1))
    assert static.refuses(1) is None and static.refuses(8) == "it takes a static batch of 1, not 8"
    profile = Runner("tensorrt: model.fp16.engine", "fp16", run=lambda x: x, batches=(1, 16))
    assert profile.refuses(16) is None and "batches 1..16 (its profile)" in profile.refuses(32)
