"""The target TensorRT: --target-trt, the installed TensorRT, or the JetPack of fake Jetson release files."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_biformer.engine.target import (
    TensorRTTarget,
    detect_target,
    jetpack_release,
    parse_version,
    read_l4t,
)
from edge_biformer.errors import EdgeBiformerError

#: /etc/nv_tegra_release as Jetson Linux writes it.
RELEASE = (
    "# R{major} (release), REVISION: {revision}, GCID: 33958178, BOARD: t186ref, EABI: aarch64, "
    "DATE: Tue Aug  1 19:57:35 UTC 2023\n"
)
DPKG = """Package: nvidia-l4t-kernel
Status: install ok installed
Version: 5.15.136-tegra-36.3.0-20240506102626

Package: nvidia-l4t-core
Status: {status}
Architecture: arm64
Version: {version}

Package: zlib1g
Status: install ok installed
Version: 1:1.2.11
"""


def _release(tmp_path: Path, major: int, revision: str) -> Path:
    path = tmp_path / "nv_tegra_release"
    path.write_text(RELEASE.format(major=major, revision=revision))
    return path


def _dpkg(tmp_path: Path, version: str, status: str = "install ok installed") -> Path:
    path = tmp_path / "status"
    path.write_text(DPKG.format(version=version, status=status))
    return path


def _none() -> None:
    return None


@pytest.mark.parametrize(
    ("major", "revision", "l4t", "jetpack", "tensorrt"),
    [
        (35, "2.1", "35.2.1", "5.1", "8.5.2"),
        (35, "4.1", "35.4.1", "5.1.2", "8.5.2"),
        (35, "6.0", "35.6.0", "5.1.4", "8.5.2"),
        (36, "3.0", "36.3.0", "6.0", "8.6.2"),
        (36, "4.0", "36.4.0", "6.1", "10.3.0"),
        (36, "4.3", "36.4.3", "6.2", "10.3.0"),
        (38, "2.0", "38.2.0", "7.0", "10.13.3"),
    ],
)
def test_release_file_gives_the_jetpack(tmp_path, major, revision, l4t, jetpack, tensorrt) -> None:
    release = _release(tmp_path, major, revision)
    assert read_l4t(release, tmp_path / "no-dpkg") == l4t
    row = jetpack_release(l4t)
    assert row is not None and (row.jetpack, row.tensorrt) == (jetpack, tensorrt)
    target = detect_target(None, installed=_none, release_file=release, dpkg_status=tmp_path / "none")
    assert target is not None and target.text == tensorrt and f"JetPack {jetpack}, L4T {l4t}" in target.source


def test_dpkg_package_when_the_release_file_is_missing(tmp_path) -> None:
    missing = tmp_path / "missing"
    assert read_l4t(missing, _dpkg(tmp_path, "36.3.0-20240506102626")) == "36.3.0"
    assert read_l4t(missing, _dpkg(tmp_path, "36.3.0-20240506102626", "deinstall ok config-files")) is None
    assert read_l4t(missing, missing) is None  # not a Jetson
    assert detect_target(None, installed=_none, release_file=missing, dpkg_status=missing) is None


def test_newer_release_of_a_known_major_takes_its_newest_row() -> None:
    row = jetpack_release("35.9.0")
    assert row is not None and row.tensorrt == "8.5.2"
    assert jetpack_release("99.0.0") is None


def test_precedence_explicit_then_installed_then_jetson(tmp_path) -> None:
    release = _release(tmp_path, 36, "3.0")
    installed = lambda: (10, 3, 0)  # noqa: E731
    explicit = detect_target("8.5", installed=installed, release_file=release, dpkg_status=release)
    assert explicit is not None and explicit.version == (8, 5, 0) and explicit.source == "--target-trt"
    assert explicit.jetpack is not None and explicit.jetpack.jetpack == "6.0"
    found = detect_target(None, installed=installed, release_file=release, dpkg_status=release)
    assert found is not None and found.version == (10, 3, 0) and "installed" in found.source


def test_unsupported_jetsons_and_versions_fail_clearly(tmp_path) -> None:
    with pytest.raises(EdgeBiformerError, match=r"older than 8.5.*JetPack 5.1 or newer"):
        detect_target(None, installed=_none, release_file=_release(tmp_path, 35, "1.0"), dpkg_status=tmp_path)
    with pytest.raises(EdgeBiformerError, match=r"Jetson Linux 99.1.0.*--target-trt"):
        detect_target(None, installed=_none, release_file=_release(tmp_path, 99, "1.0"), dpkg_status=tmp_path)
    with pytest.raises(EdgeBiformerError, match=r"--target-trt expects"):
        parse_version("eight")
    with pytest.raises(EdgeBiformerError, match=r"not supported"):
        TensorRTTarget((9, 2, 0), "--target-trt")


@pytest.mark.parametrize(
    ("version", "family", "interface", "strong", "calibrator"),
    [
        ("8.5.2", "8.5", "IPluginV2DynamicExt", False, True),
        ("8.6", "8.6", "IPluginV2DynamicExt", False, True),
        ("10.0.1", "10", "IPluginV3", True, True),
        ("10.3", "10", "IPluginV3", True, False),
        ("11.1.0.4", "11", "IPluginV3", True, False),
    ],
)
def test_what_a_version_decides(version, family, interface, strong, calibrator) -> None:
    target = TensorRTTarget(parse_version(version), "--target-trt")
    assert target.family == family and target.plugin_interface == interface
    assert target.strongly_typed is strong and target.implicit_calibrator is calibrator
    assert target.to_dict()["plugin_interface"] == interface
