"""A real Triton Inference Server on a CPU machine, for the CPU repositories ``serve-repo --onnx`` writes.

The ``nvidia-pytriton`` wheel ships ``tritonserver`` (2.51) with its Python backend. Its backend stub
needs numpy < 2, which the rest of edge-biformer does not want, so the server runs from a serving
environment of its own (:func:`prepare_env`): a virtualenv that sees this environment's packages
(onnxruntime, Pillow, edge-biformer) with ``numpy<2`` and ``nvidia-pytriton`` (no dependencies: only
its binaries are used) installed on top. It is made once, in ``~/.cache/edge-biformer`` (or
``EDGE_BIFORMER_TRITON_ENV``), and reused.

:class:`TritonServer` assembles the backend directory in a temporary folder (``libtriton_python.so``
with the stub of the serving Python's version beside it; site-packages is never written), starts
``tritonserver`` on 127.0.0.1 with the given or free ports, waits for ``/v2/health/ready`` and stops
it (by its PID) on exit::

    python -m edge_biformer.serve.cpu_server REPO            # serves until Ctrl-C (ports 8000/8001/8002)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edge_biformer.errors import EdgeBiformerError

__all__ = ["PYTRITON_VERSION", "ServingEnv", "TritonServer", "default_env_dir", "free_port", "prepare_env"]

#: The nvidia-pytriton release whose tritonserver (2.51) the serving environment installs.
PYTRITON_VERSION = "0.7.0"
ENV_VAR = "EDGE_BIFORMER_TRITON_ENV"


class ServerError(EdgeBiformerError):
    """The serving environment cannot be made, or the server does not start."""


def default_env_dir() -> Path:
    """Where the serving environment lives: ``$EDGE_BIFORMER_TRITON_ENV``, else the user's cache."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return (
        cache
        / "edge-biformer"
        / f"triton-cpu-pytriton{PYTRITON_VERSION}-py{sys.version_info[0]}{sys.version_info[1]}"
    )


@dataclass(frozen=True)
class ServingEnv:
    """A serving environment: its Python and the tritonserver files of its nvidia-pytriton."""

    root: Path
    python: Path
    tritonserver: Path
    backend: Path  # pytriton/tritonserver/backends/python
    stub: Path
    libs: Path  # nvidia_pytriton.libs
    site: Path  # the environment's own site-packages

    @property
    def bin_dir(self) -> Path:
        return self.python.parent


def _site_packages(python: Path) -> Path:
    out = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return Path(out.stdout.strip())


def _locate(root: Path, python: Path) -> ServingEnv:
    site = _site_packages(python)
    base = site / "pytriton" / "tritonserver"
    version = subprocess.run(
        [str(python), "-c", "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    env = ServingEnv(
        root=root,
        python=python,
        tritonserver=base / "bin" / "tritonserver",
        backend=base / "backends" / "python",
        stub=base / "python_backend_stubs" / version / "triton_python_backend_stub",
        libs=site / "nvidia_pytriton.libs",
        site=site,
    )
    for path in (env.tritonserver, env.backend / "libtriton_python.so", env.stub):
        if not path.exists():
            raise ServerError(
                f"the serving environment {root} has no {path}: nvidia-pytriton {PYTRITON_VERSION} has no "
                f"Triton server for Python {version} here; delete {root} and run again, or use Python "
                "3.10-3.13"
            )
    return env


def prepare_env(root: Path | None = None, quiet: bool = True) -> ServingEnv:
    """The serving environment at ``root`` (default :func:`default_env_dir`), made on first use.

    Raises:
        ServerError: the virtualenv or the pip install fails (the message has pip's last lines).
    """
    root = Path(root) if root is not None else default_env_dir()
    python = root / "bin" / "python"
    marker = root / ".edge-biformer-ready"
    if marker.is_file() and python.exists():
        return _locate(root, python)
    if root.exists():
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    steps = [
        [sys.executable, "-m", "venv", "--system-site-packages", str(root)],
        [
            str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", "numpy<2",
            f"nvidia-pytriton=={PYTRITON_VERSION}", "--no-deps",
        ],
    ]  # fmt: skip
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = " | ".join([ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()][-8:])
            shutil.rmtree(root, ignore_errors=True)
            raise ServerError(
                f"making the Triton serving environment in {root} failed ({' '.join(cmd)} exited with "
                f"{proc.returncode}): {tail}. It needs network access to PyPI the first time."
            )
    marker.write_text(f"nvidia-pytriton {PYTRITON_VERSION}, numpy<2\n")
    return _locate(root, python)


def link_package(env: ServingEnv) -> Path:
    """Make this edge-biformer importable by the Python backend's models (rewritten graphs run through
    ``edge_biformer.runtime.cpu_session`` there): a symlink in the serving environment's own
    site-packages to the package this process imports.

    The stub adds the site-packages folders to ``sys.path`` without running their ``.pth`` files, so an
    editable install is invisible to it; a package folder is not. The link is replaced atomically.
    """
    import edge_biformer

    package = Path(edge_biformer.__file__).resolve().parent
    link = env.site / "edge_biformer"
    if link.is_symlink() and link.resolve() == package:
        return link
    if link.exists() and not link.is_symlink():
        raise ServerError(
            f"{link} is a folder, not the link edge-biformer makes; delete {env.root} and run again"
        )
    tmp = env.site / f".edge_biformer.{os.getpid()}.link"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(package, tmp)
    os.replace(tmp, link)
    return link


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TritonServer:
    """``tritonserver`` serving ``repository`` on 127.0.0.1 (a context manager; ports free unless given)."""

    def __init__(
        self,
        repository: str | os.PathLike[str],
        env: ServingEnv | None = None,
        *,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        startup_timeout: float = 120.0,
        log_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self.repository = Path(repository).resolve()
        if not self.repository.is_dir():
            raise ServerError(
                f"{self.repository} is not a folder: give a model repository (serve-repo writes one)"
            )
        self.env = env or prepare_env()
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.startup_timeout = startup_timeout
        self._workdir: Path | None = None
        self._log_path = Path(log_file) if log_file else None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log_text(self) -> str:
        """What the server has logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""

    @property
    def log_path(self) -> Path:
        assert self._log_path is not None, "the server was not started"
        return self._log_path

    def _backends(self, workdir: Path) -> Path:
        backends = workdir / "backends"
        python = backends / "python"
        python.mkdir(parents=True)
        for item in self.env.backend.iterdir():
            if item.is_file():
                os.symlink(item, python / item.name)
        shutil.copy2(self.env.stub, python / "triton_python_backend_stub")  # a copy: the stub finds its dir
        return backends

    def start(self) -> TritonServer:
        """Start the server and wait until it is ready (raises :class:`ServerError` with its log)."""
        link_package(self.env)
        self._workdir = Path(tempfile.mkdtemp(prefix="edge-biformer-triton-"))
        if self._log_path is None:
            self._log_path = self._workdir / "tritonserver.log"
        backends = self._backends(self._workdir)
        environ = dict(os.environ)
        environ["PATH"] = f"{self.env.bin_dir}{os.pathsep}{environ.get('PATH', '')}"  # the stub's python3
        environ["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(self.env.libs), environ.get("LD_LIBRARY_PATH", "")) if p
        )
        environ.pop("PYTHONHOME", None)
        cmd = [
            str(self.env.tritonserver),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--http-address=127.0.0.1",
            "--grpc-address=127.0.0.1",
            "--allow-metrics=false",
            "--exit-on-error=true",
            "--log-verbose=0",
        ]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=environ, cwd=self._workdir
            )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.errors()
                self.stop()
                raise ServerError(
                    f"tritonserver exited with status {self.process.returncode} while starting:\n{tail}"
                )
            if self.ready():
                return self
            time.sleep(0.25)
        tail = self.errors()
        self.stop()
        raise ServerError(f"tritonserver was not ready after {self.startup_timeout:.0f} s:\n{tail}")

    def errors(self, last: int = 12) -> str:
        """The server's error lines (``E...`` and model load failures), else the last lines of its log."""
        lines = self.log_text().splitlines()
        wanted = [ln for ln in lines if ln.startswith("E") or "failed to load" in ln or "error:" in ln]
        return "\n".join((wanted or lines)[-last:])

    def ready(self) -> bool:
        """Whether ``/v2/health/ready`` answers 200."""
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 20 s) and remove its temporary folder (and log)."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m edge_biformer.serve.cpu_server REPO``: serve a CPU repository until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m edge_biformer.serve.cpu_server",
        description="Serve a CPU model repository (serve-repo --onnx) with a real Triton server.",
    )
    parser.add_argument("repository", help="the model repository")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--env", help=f"serving environment folder (default {default_env_dir()})")
    args = parser.parse_args(argv)
    from edge_biformer.utils import log

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM stops the server as Ctrl-C does (never an orphaned tritonserver)

    signal.signal(signal.SIGTERM, terminate)
    try:
        log(
            f"serving environment: {args.env or default_env_dir()} (made on first use: numpy<2, "
            "nvidia-pytriton)"
        )
        env = prepare_env(Path(args.env) if args.env else None)
        server = TritonServer(
            args.repository,
            env,
            http_port=args.http_port,
            grpc_port=args.grpc_port,
            metrics_port=args.metrics_port,
        )
        with server:
            log(
                f"Triton is serving {server.repository}: HTTP {server.http_url}, gRPC {server.grpc_url} "
                "(Ctrl-C stops it)"
            )
            while server.process is not None and server.process.poll() is None:
                time.sleep(1)
            tail = server.errors(25)
            status = server.process.returncode if server.process else "?"
            log(f"tritonserver exited with status {status}:\n{tail}")
            return 1
    except EdgeBiformerError as err:
        print(f"edge-biformer cpu_server: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
