"""The CLI's log: one line per stage with what ran, how long it took and what it wrote."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from edge_biformer.utils.fileio import file_size_str

PREFIX = "[edge-biformer]"


def log(message: str) -> None:
    """Print one log line (flushed, so progress shows in CI logs and pipes)."""
    print(f"{PREFIX} {message}", file=sys.stdout, flush=True)


@dataclass
class StageResult:
    """What a stage reports: an output path (size is read after the stage) and free-form details."""

    output: str | os.PathLike[str] | None = None
    details: list[str] = field(default_factory=list)


@contextlib.contextmanager
def stage(name: str) -> Iterator[StageResult]:
    """Time a stage and print ``[edge-biformer] <name>  <seconds>  -> <path> (<size>)  <details>``.

    Nothing is printed if the stage raises: the error message is what the user sees.
    """
    result = StageResult()
    start = time.perf_counter()
    yield result
    seconds = time.perf_counter() - start
    parts = [f"{name:<22s} {seconds:7.2f} s"]
    if result.output is not None:
        parts.append(f"-> {os.fspath(result.output)} ({file_size_str(result.output)})")
    parts.extend(result.details)
    log("  ".join(parts))


@contextlib.contextmanager
def heartbeat(what: str, every: float = 30.0) -> Iterator[None]:
    """Say that long work is under way: ``<what> ...`` now, then ``still running (N s)`` every ``every`` s.

    The lines go to the stream that was ``sys.stdout`` on entry, so a library that redirects
    stdout inside the block (modelopt's chatter is kept out of the log that way) does not hide them.
    """
    stream = sys.stdout
    print(f"{PREFIX} {what} ...", file=stream, flush=True)
    start = time.perf_counter()
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            elapsed = time.perf_counter() - start
            print(f"{PREFIX} {what}: still running ({elapsed:.0f} s)", file=stream, flush=True)

    thread = threading.Thread(target=beat, name="edge-biformer-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
