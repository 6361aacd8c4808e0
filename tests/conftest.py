"""Shared fixtures: the real upstream sdist and a tree produced by the installer's real `apply`.

- `upstream_sdist`: path of cosmos_predict2-1.0.9.tar.gz. $COSMOS_OVERLAY_SDIST if set; else the installer's cache
  ($COSMOS_OVERLAY_CACHE or ~/.cache/cosmos-predict2-overlay), downloaded there with pip when absent (skips with
  the installer's error line when PyPI is unreachable).
- `overlay_wheel`: the cosmos_predict2_overlay wheel built (once per session) from a copy of this checkout, so the
  checkout gets no build/ or egg-info.
- `applied_tree`: a session-wide temp directory where `python -m installer apply --source <sdist>` ran with this
  checkout's series and overlay. Treat it as read-only (copy it before changing anything).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session")
def upstream_sdist() -> Path:
    env = os.environ.get("COSMOS_OVERLAY_SDIST")
    if env:
        if not os.path.isfile(env):
            pytest.fail(f"COSMOS_OVERLAY_SDIST={env} does not exist")
        return Path(env)
    from installer.errors import InstallerError
    from installer.fetch import download_sdist

    try:
        return Path(download_sdist())
    except InstallerError as e:
        pytest.skip(f"upstream sdist unavailable: {e}")


@pytest.fixture(scope="session")
def applied_tree(upstream_sdist, tmp_path_factory) -> Path:
    tree = tmp_path_factory.mktemp("applied") / "cosmos-predict2"
    r = subprocess.run([sys.executable, "-m", "installer", "apply", "--source", str(upstream_sdist),
                        "--target", str(tree)], cwd=REPO, capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"installer apply failed (rc {r.returncode}): {r.stdout}{r.stderr}")
    return tree


@pytest.fixture(scope="session")
def overlay_wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("wheel-src")
    ign = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("installer", "patches", "overlay"):
        shutil.copytree(REPO / name, src / name, ignore=ign)
    shutil.copy2(REPO / "setup.py", src / "setup.py")  # no top-level train.sh: the wheel takes it from overlay/
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    (whl,) = out.glob("cosmos_predict2_overlay-*.whl")
    return whl
