"""The real torch-npu==2.7.1 wheels (x86_64 and aarch64) from PyPI, downloaded once and cached beside the upstream
sdist (~/.cache/cosmos-predict2-overlay/torch_npu-2.7.1/<arch>/). They are read as zip files and NEVER imported.
Skipped, with the reason, only when PyPI cannot be reached; any other download failure fails the test."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import urllib.error
import urllib.request
import zipfile

import pytest

VERSION = "2.7.1"
PLATFORMS = {"x86_64": "manylinux_2_28_x86_64", "aarch64": "manylinux_2_28_aarch64"}
CACHE = os.path.join(os.path.expanduser("~"), ".cache", "cosmos-predict2-overlay", f"torch_npu-{VERSION}")


def _pypi_reachable() -> str | None:
    try:
        urllib.request.urlopen("https://pypi.org/simple/torch-npu/", timeout=20).close()
    except (urllib.error.URLError, OSError) as e:
        return f"PyPI unreachable ({e})"
    return None


def _wheel(arch: str) -> str:
    dest = os.path.join(CACHE, arch)
    found = glob.glob(os.path.join(dest, f"torch_npu-{VERSION}-*.whl"))
    if not found:
        why = _pypi_reachable()
        if why:
            pytest.skip(f"needs the torch-npu=={VERSION} wheel: {why}")
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                            "--platform", PLATFORMS[arch], "--python-version", "3.11", "--implementation", "cp",
                            "--index-url", "https://pypi.org/simple", "-d", dest, f"torch-npu=={VERSION}"],
                           capture_output=True, text=True, timeout=600)
        found = glob.glob(os.path.join(dest, f"torch_npu-{VERSION}-*.whl"))
        assert r.returncode == 0 and found, r.stdout[-2000:] + r.stderr[-2000:]
    return found[0]


class Wheel:
    """Text files of one wheel, read from the zip."""

    def __init__(self, path: str):
        self.path = path
        self.zip = zipfile.ZipFile(path)

    def text(self, name: str) -> str:
        return self.zip.read(name).decode("utf-8")

    def metadata(self) -> str:
        (name,) = [n for n in self.zip.namelist() if n.endswith(".dist-info/METADATA")]
        return self.text(name)


@pytest.fixture(scope="session", params=sorted(PLATFORMS))
def npu_wheel(request) -> Wheel:
    return Wheel(_wheel(request.param))


@pytest.fixture(scope="session")
def x86_wheel() -> Wheel:
    return Wheel(_wheel("x86_64"))


@pytest.fixture(scope="session")
def arm_wheel() -> Wheel:
    return Wheel(_wheel("aarch64"))
