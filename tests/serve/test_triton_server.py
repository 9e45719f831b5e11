"""A real Triton Inference Server (nvidia-pytriton's tritonserver 2.51, on this CPU) serving a repository
written by ``serve-repo --onnx --ensemble``: HTTP and gRPC answers equal PyTorch, and a bounded
concurrent load with dynamic batching loses nothing.

The server runs from the serving environment of :mod:`edge_biformer.serve.cpu_server` (a virtualenv
with numpy<2 and nvidia-pytriton, made once in ~/.cache/edge-biformer; it needs PyPI the first time).
"""

from __future__ import annotations

import contextlib
import io
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from edge_biformer.calib import preprocess_image
from edge_biformer.cli.main import main
from edge_biformer.testing import assert_close

pytest.importorskip("tritonclient.http", reason="tritonclient (the [serve] extra) is needed")

pytestmark = pytest.mark.slow

MODEL, ENSEMBLE = "biformer", "biformer_ensemble"


@pytest.fixture(scope="module")
def server(reduced, tmp_path_factory):
    from edge_biformer.serve.cpu_server import TritonServer, prepare_env

    repo = tmp_path_factory.mktemp("triton") / "model_repository"
    args = ["serve-repo", "--onnx", str(reduced.onnx), "--output", str(repo), "--ensemble"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main([*args, "--max-batch", "8", "--queue-delay-us", "5000", "--threads", "1"]) == 0
    with TritonServer(repo, prepare_env(), startup_timeout=180) as srv:
        srv.printed = printed.getvalue()  # type: ignore[attr-defined]
        yield srv


def _client(server, model: str, protocol: str):
    from edge_biformer.serve.client import TritonClassifier

    url = server.http_url if protocol == "http" else server.grpc_url
    return TritonClassifier(url, model, protocol, timeout=60)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_answers_equal_pytorch(server, reduced, protocol):
    files = reduced.image_files()[:6]
    batch = np.stack([preprocess_image(Image.open(f), 48) for f in files])
    expected = reduced.torch_logits(batch)
    assert_close(_client(server, MODEL, protocol).infer_tensors(batch), expected, "export")
    ensemble = _client(server, ENSEMBLE, protocol)
    assert_close(ensemble.infer_images(files), expected, "export")  # encoded PNGs, preprocessed in Triton
    top = ensemble.classify_images(files, k=3)
    truth = [reduced.classes[int(f.parent.name.split("_")[0])] for f in files]
    assert [row[0][2] for row in top] == truth  # the labels.txt names, top-1 right on every image
    assert [row[0][1] for row in top] == list(np.argmax(expected, axis=1))


def test_a_bad_image_fails_only_its_request(server, reduced):
    client = _client(server, ENSEMBLE, "http")
    with pytest.raises(Exception, match="cannot decode the image"):
        client.infer_images([b"definitely not an image"])
    assert client.infer_images(reduced.image_files()[:1]).shape == (1, 10)  # the model still serves


def test_concurrent_load_with_dynamic_batching_loses_nothing(server, reduced):
    clients, requests_each = 8, 6
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 3, size=(clients, requests_each))
    inputs = [[rng.standard_normal((int(n), 3, 48, 48)).astype(np.float32) for n in row] for row in sizes]
    expected = [[reduced.torch_logits(x) for x in row] for row in inputs]
    stats_client = _client(server, MODEL, "http").client
    before = stats_client.get_inference_statistics(MODEL)["model_stats"][0]
    checked = []
    lock = threading.Lock()

    def worker(i: int) -> int:
        client = _client(server, MODEL, "grpc" if i % 2 else "http")
        for x, want in zip(inputs[i], expected[i], strict=True):
            got = client.infer_tensors(x)
            assert_close(got, want, "export", msg=f"client {i}")
            with lock:
                checked.append(x.shape[0])
        return i

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        done = [f.result(timeout=120) for f in [pool.submit(worker, i) for i in range(clients)]]
    assert sorted(done) == list(range(clients)) and time.monotonic() - start < 120
    assert len(checked) == clients * requests_each and sum(checked) == int(sizes.sum())  # nothing lost
    after = stats_client.get_inference_statistics(MODEL)["model_stats"][0]
    inferences = int(after["inference_count"]) - int(before["inference_count"])
    executions = int(after["execution_count"]) - int(before["execution_count"])
    assert inferences == int(sizes.sum())
    assert executions < clients * requests_each, "the dynamic batcher merged no requests"


def test_the_printed_client_commands_work(server):
    """serve-repo's next commands (HTTP and gRPC client), pointed at this server's ports."""
    commands = [ln.strip() for ln in server.printed.splitlines() if "edge_biformer.serve.client" in ln]
    assert len(commands) == 2 and any("--grpc" in c for c in commands)
    for command in commands:
        http, grpc = server.http_url.split(":")[1], server.grpc_url.split(":")[1]
        argv = shlex.split(
            command.replace("127.0.0.1:8000", f"127.0.0.1:{http}").replace(
                "127.0.0.1:8001", f"127.0.0.1:{grpc}"
            )
        )
        assert argv[0] == "python"
        proc = subprocess.run(
            [sys.executable, *argv[1:]], capture_output=True, text=True, timeout=120, check=False
        )
        assert proc.returncode == 0, proc.stderr
        line = proc.stdout.strip().splitlines()[-1]
        assert line.startswith(argv[-1] + ": ") and len(line.split("  ")) == 5  # the top-5 with labels


def test_a_rewritten_graph_is_served_through_cpu_session(reduced, tmp_path):
    """The plugin graph (BiLevelRoutingAttention nodes) in Triton's Python backend: the model imports
    edge_biformer there (linked into the serving environment), and the answers equal PyTorch."""
    from edge_biformer.serve.cpu_server import TritonServer, prepare_env

    plugin = tmp_path / "reduced.plugin.onnx"
    repo = tmp_path / "plugin_repository"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["rewrite", str(reduced.onnx), "--output", str(plugin)]) == 0
        assert main(["serve-repo", "--onnx", str(plugin), "--output", str(repo), "--threads", "1"]) == 0
    assert 'string_value: "true"' in (repo / MODEL / "config.pbtxt").read_text()  # plugin_nodes
    files = reduced.image_files()[:4]
    batch = np.stack([preprocess_image(Image.open(f), 48) for f in files])
    with TritonServer(repo, prepare_env(), startup_timeout=180) as srv:
        got = _client(srv, MODEL, "grpc").infer_tensors(batch)
    assert_close(got, reduced.torch_logits(batch), "rewrite.graph.float32")


def test_the_cpu_server_command_stops_triton_on_sigterm(reduced, tmp_path):
    """``python -m edge_biformer.serve.cpu_server REPO`` serves until stopped; SIGTERM (a service manager,
    ``kill``) stops tritonserver too, as Ctrl-C does: nothing keeps answering on its ports."""
    import signal
    import urllib.request

    from edge_biformer.serve.cpu_server import free_port

    repo = tmp_path / "repo"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["serve-repo", "--onnx", str(reduced.onnx), "--output", str(repo)]) == 0
    http, grpc, metrics = free_port(), free_port(), free_port()
    cmd = [sys.executable, "-m", "edge_biformer.serve.cpu_server", str(repo), "--http-port", str(http),
           "--grpc-port", str(grpc), "--metrics-port", str(metrics)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{http}/v2/health/ready"
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:  # the ready line comes once the server answers
            lines.append(line)
            if "Triton is serving" in line:
                break
        assert "Triton is serving" in "".join(lines), "".join(lines)
        with urllib.request.urlopen(url, timeout=5) as r:
            assert r.status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=5)
