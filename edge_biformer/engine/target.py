"""Which TensorRT an engine is built for: its version, plugin interface and build mode.

The target is, first match wins: ``--target-trt`` (:attr:`EngineOptions.target_tensorrt`), the TensorRT
installed here, or the JetPack release of a Jetson, read from ``/etc/nv_tegra_release`` or else the
version of the ``nvidia-l4t-core`` package. Without any of them it is unknown, and the engine stage
prints the commands of each TensorRT major. The JetPack table below is also docs/jetson.md's.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edge_biformer.errors import EdgeBiformerError

__all__ = [
    "DPKG_STATUS",
    "JETPACK_RELEASES",
    "RELEASE_FILE",
    "JetPackRelease",
    "TensorRTTarget",
    "detect_target",
    "jetpack_release",
    "parse_version",
    "read_l4t",
]

RELEASE_FILE = Path("/etc/nv_tegra_release")
DPKG_STATUS = Path("/var/lib/dpkg/status")
#: The oldest TensorRT the plugin library builds for (JetPack 5.1).
MIN_VERSION = (8, 5, 0)


@dataclass(frozen=True)
class JetPackRelease:
    """One JetPack release: its Jetson Linux (L4T) version and what it ships."""

    jetpack: str
    l4t: str
    cuda: str
    tensorrt: str
    gpu: str


#: JetPack releases by Jetson Linux version (a release covers every L4T version its ``l4t`` prefixes).
JETPACK_RELEASES: tuple[JetPackRelease, ...] = (
    JetPackRelease("5.0 DP", "34.1", "11.4", "8.4.0", "Orin sm_87, Xavier sm_72"),
    JetPackRelease("5.0.2", "35.1", "11.4", "8.4.1", "Orin sm_87, Xavier sm_72"),
    JetPackRelease("5.1", "35.2", "11.4", "8.5.2", "Orin sm_87, Xavier sm_72"),
    JetPackRelease("5.1.1", "35.3", "11.4", "8.5.2", "Orin sm_87, Xavier sm_72"),
    JetPackRelease("5.1.2", "35.4", "11.4", "8.5.2", "Orin sm_87, Xavier sm_72"),
    JetPackRelease("5.1.3", "35.5", "11.4", "8.5.2", "Orin sm_87, Xavier sm_72"),
    JetPackRelease("5.1.4", "35.6", "11.4", "8.5.2", "Orin sm_87, Xavier sm_72"),
    JetPackRelease("6.0 DP", "36.2", "12.2", "8.6.2", "Orin sm_87"),
    JetPackRelease("6.0", "36.3", "12.2", "8.6.2", "Orin sm_87"),
    JetPackRelease("6.1", "36.4", "12.6", "10.3.0", "Orin sm_87"),
    JetPackRelease("6.2", "36.4.3", "12.6", "10.3.0", "Orin sm_87"),
    JetPackRelease("6.2.1", "36.4.4", "12.6", "10.3.0", "Orin sm_87"),
    JetPackRelease("7.0", "38.2", "13.0", "10.13.3", "Thor sm_110"),
)


def _parts(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version))


def parse_version(text: str) -> tuple[int, int, int]:
    """``"8.6"``, ``"10"``, ``"10.3.0.26"`` -> ``(8, 6, 0)``, ``(10, 0, 0)``, ``(10, 3, 0)``."""
    if not re.fullmatch(r"\d+(\.\d+){0,3}", text.strip()):
        raise EdgeBiformerError(
            f"--target-trt expects a TensorRT version such as 8.5, 8.6, 10.3 or 11, got {text!r}"
        )
    parts = [*_parts(text), 0, 0][:3]
    return parts[0], parts[1], parts[2]


def read_l4t(release_file: Path = RELEASE_FILE, dpkg_status: Path = DPKG_STATUS) -> str | None:
    """The Jetson Linux version (``"36.3.0"``) of this machine, or ``None`` when it is not a Jetson.

    ``/etc/nv_tegra_release`` reads ``# R36 (release), REVISION: 3.0, GCID: ...``; without it the
    version of the installed ``nvidia-l4t-core`` package (``36.3.0-20240506102626``) is used.
    """
    try:
        text = release_file.read_text(errors="replace")
    except OSError:
        text = ""
    match = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)(?:\.(\d+))?", text)
    if match:
        return f"{match.group(1)}.{match.group(2)}.{match.group(3) or 0}"
    try:
        status = dpkg_status.read_text(errors="replace")
    except OSError:
        return None
    for block in status.split("\n\n"):
        if re.search(r"^Package:\s*nvidia-l4t-core\s*$", block, re.M) and re.search(
            r"^Status:.*\binstalled\b", block, re.M
        ):
            version = re.search(r"^Version:\s*(\d+\.\d+(?:\.\d+)?)", block, re.M)
            if version:
                return version.group(1)
    return None


def jetpack_release(l4t: str) -> JetPackRelease | None:
    """The JetPack release of a Jetson Linux version: the row with the longest matching ``l4t`` prefix."""
    parts = _parts(l4t)
    matches = [r for r in JETPACK_RELEASES if parts[: len(_parts(r.l4t))] == _parts(r.l4t)]
    if matches:
        return max(matches, key=lambda r: len(_parts(r.l4t)))
    # A release newer than the table: its major's newest row says what it ships.
    same_major = [r for r in JETPACK_RELEASES if _parts(r.l4t)[0] == parts[0] and _parts(r.l4t) < parts]
    return max(same_major, key=lambda r: _parts(r.l4t)) if same_major else None


@dataclass(frozen=True)
class TensorRTTarget:
    """The TensorRT an engine is built for, and how it was found."""

    version: tuple[int, int, int]
    source: str
    jetpack: JetPackRelease | None = None

    def __post_init__(self) -> None:
        if self.version < MIN_VERSION:
            where = f" ({self.source})" if self.source else ""
            raise EdgeBiformerError(
                f"TensorRT {self.text}{where} is older than 8.5, the oldest TensorRT the plugin library "
                "builds for: upgrade to JetPack 5.1 or newer (docs/jetson.md)"
            )
        if self.version[0] == 9:
            raise EdgeBiformerError(
                f"TensorRT {self.text} ({self.source}) is not supported: build for TensorRT 8.5/8.6 or for "
                "10 and newer"
            )

    @property
    def major(self) -> int:
        return self.version[0]

    @property
    def text(self) -> str:
        return ".".join(map(str, self.version))

    @property
    def family(self) -> str:
        """What the printed commands depend on: ``"8.5"``, ``"8.6"``, ``"10"``, ``"11"``."""
        return f"{self.version[0]}.{self.version[1]}" if self.major < 10 else str(self.major)

    @property
    def plugin_interface(self) -> str:
        """The plugin class the library has for this TensorRT (plugins/bra/README.md)."""
        return "IPluginV3" if self.major >= 10 else "IPluginV2DynamicExt"

    @property
    def strongly_typed(self) -> bool:
        """Strongly typed networks exist from TensorRT 10 (8.x builds weakly typed with precision flags)."""
        return self.major >= 10

    @property
    def implicit_calibrator(self) -> bool:
        """Whether TensorRT still calibrates INT8 itself (``--int8-mode calibrator``): before 10.1."""
        return self.version < (10, 1, 0)

    def label(self) -> str:
        """``TensorRT 8.6.2 (JetPack 6.0, L4T 36.3.0)``."""
        return f"TensorRT {self.text} ({self.source})"

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``engine.target``."""
        return {
            "tensorrt": self.text,
            "found_by": self.source,
            "plugin_interface": self.plugin_interface,
            "strongly_typed": self.strongly_typed,
            "jetpack": asdict(self.jetpack) if self.jetpack else None,
        }


def _installed() -> tuple[int, int, int] | None:
    from edge_biformer.engine.tensorrt import tensorrt_version

    return tensorrt_version()


def detect_target(
    explicit: str | None = None,
    *,
    installed: Callable[[], tuple[int, int, int] | None] = _installed,
    release_file: Path = RELEASE_FILE,
    dpkg_status: Path = DPKG_STATUS,
) -> TensorRTTarget | None:
    """The target: ``explicit`` (``--target-trt``), the installed TensorRT, the Jetson's; else ``None``."""
    l4t = read_l4t(release_file, dpkg_status)
    release = jetpack_release(l4t) if l4t else None
    if explicit:
        return TensorRTTarget(parse_version(explicit), "--target-trt", release)
    version = installed()
    if version is not None:
        return TensorRTTarget(version, "the TensorRT installed here", release)
    if release is not None:
        return TensorRTTarget(
            parse_version(release.tensorrt), f"JetPack {release.jetpack}, L4T {l4t}", release
        )
    if l4t:
        raise EdgeBiformerError(
            f"this Jetson runs Jetson Linux {l4t}, which is not in the JetPack table of docs/jetson.md; pass "
            "--target-trt with its TensorRT version (dpkg -l | grep nvinfer shows it)"
        )
    return None
