"""File helpers: write to a temporary sibling and rename, so no half-written artifact is left."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary file lives in the same directory (so the rename is atomic on POSIX) and is removed
    if the block raises, is interrupted (KeyboardInterrupt) or never creates it. Writers that add
    side files (ONNX external data) must not be used with this helper.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=suffix if suffix is not None else ".tmp", dir=path.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the final file the usual mode
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def require_writable_dir(folder: str | os.PathLike[str], option: str = "--output") -> None:
    """Fail now, not after minutes of work, if files cannot be written into ``folder``.

    ``folder`` need not exist yet: its nearest existing ancestor must be a directory in which a
    file can be created (probed with a real temporary file, so read-only mounts and permissions
    are caught for any user, root included).
    """
    from edge_biformer.errors import EdgeBiformerError

    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise EdgeBiformerError(
            f"{option} {folder}: {existing} is a file, not a folder; choose an output path in a folder"
        )
    try:
        fd, probe = tempfile.mkstemp(prefix=".edge_biformer_probe_", dir=existing)
    except OSError as err:
        raise EdgeBiformerError(
            f"{option} {folder}: cannot write into {existing} ({err.strerror or err}); choose a folder you "
            "can write to, or fix its permissions, before the work starts"
        ) from None
    os.close(fd)
    os.unlink(probe)


def check_onnx_output(output: str | os.PathLike[str], source: str | os.PathLike[str] | None = None) -> Path:
    """Validate an ``--output`` path for an ONNX file (and that it is not the ``source`` itself)."""
    from edge_biformer.errors import EdgeBiformerError

    output = Path(output)
    if output.suffix != ".onnx":
        raise EdgeBiformerError(f"--output {output} should end in .onnx")
    if output.is_dir():
        raise EdgeBiformerError(f"--output {output} is a directory; give the path of the .onnx file to write")
    if source is not None and output.resolve() == Path(source).resolve():
        raise EdgeBiformerError(
            f"--output {output} is the input itself; write the result to a new file (the input stays the "
            "reference that the checks and the manifest refer to)"
        )
    require_writable_dir(output.parent)
    return output


def file_size_str(path: str | os.PathLike[str]) -> str:
    """Human-readable size of a file (``"12.3 MB"``), or ``"missing"``."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return "missing"
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000.0
    raise AssertionError("unreachable")


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
