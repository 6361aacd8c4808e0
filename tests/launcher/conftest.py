"""Fixtures for the launcher tests; see launcher_helpers.py for what each tree is."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from launcher_helpers import LAUNCHER_FILES, PYTHON, REPO, copy_code, touch  # noqa: E402


@pytest.fixture
def skeleton_tree(tmp_path):
    tree = str(tmp_path / "tree")
    touch(f"{tree}/cosmos_predict2/configs/base/config.py", b"")
    device = os.path.join(REPO, "overlay/cosmos_predict2/portable/device.py")
    if os.path.isfile(device):
        os.makedirs(f"{tree}/cosmos_predict2/portable", exist_ok=True)
        shutil.copy(device, f"{tree}/cosmos_predict2/portable/device.py")
        for name in ("autoload.py", "user_error.py"):
            shutil.copy(os.path.join(os.path.dirname(device), name), f"{tree}/cosmos_predict2/portable/")
    for sub in ("cosmos_nemo_assets/videos/a.mp4", "cosmos_nemo_assets/t5_xxl/a.pickle",
                "cosmos_nemo_assets_images/images/a.jpg", "cosmos_nemo_assets_images/t5_xxl/a.pickle"):
        touch(f"{tree}/datasets/smoke/{sub}")
    touch(f"{tree}/checkpoints/smoke/tokenizer.pth")
    return tree


@pytest.fixture(scope="session")
def launch_tree(request, tmp_path_factory):
    src = os.environ.get("COSMOS_TEST_TREE")
    overlay_launcher = bool(src)
    if not src:
        try:
            src = str(request.getfixturevalue("applied_tree"))
        except pytest.FixtureLookupError:
            pytest.skip("no patched tree: set COSMOS_TEST_TREE or provide tests/conftest.py::applied_tree")
    if not os.path.isfile(os.path.join(src, "cosmos_predict2/configs/base/config.py")):
        pytest.skip(f"{src} is not a cosmos-predict2 tree")
    dst = str(tmp_path_factory.mktemp("launch") / "tree")
    copy_code(src, dst)
    if overlay_launcher:  # a dev tree may predate this checkout's launcher files
        for rel_src, rel_dst in LAUNCHER_FILES.items():
            os.makedirs(os.path.dirname(os.path.join(dst, rel_dst)), exist_ok=True)
            shutil.copy(os.path.join(REPO, rel_src), os.path.join(dst, rel_dst))
    have = all(os.path.isdir(os.path.join(src, "datasets/smoke", d))
               for d in ("cosmos_nemo_assets", "cosmos_nemo_assets_images"))
    if have and os.path.isfile(os.path.join(src, "checkpoints/smoke/tokenizer.pth")):
        os.makedirs(os.path.join(dst, "datasets"), exist_ok=True)
        os.makedirs(os.path.join(dst, "checkpoints"), exist_ok=True)
        os.symlink(os.path.join(src, "datasets/smoke"), os.path.join(dst, "datasets/smoke"))
        os.symlink(os.path.join(src, "checkpoints/smoke"), os.path.join(dst, "checkpoints/smoke"))
    else:
        r = subprocess.run([PYTHON, "-m", "scripts.make_smoke_dataset"], cwd=dst, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-3000:]
    return dst
