"""Helpers shared by the launcher tests: experiment names, the launcher's file list, running train.sh.

The fixtures built from these (conftest.py): `skeleton_tree`, a directory with only the layout train.sh validates
(config file path, device layer, dataset and checkpoint files as plain bytes), enough for every check made before
torchrun; `launch_tree`, a private copy of a real patched tree from $COSMOS_TEST_TREE (this checkout's launcher
files copied over it) or from tests/conftest.py's `applied_tree` (used as installed), with the smoke dataset.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
from tests import procgroup  # noqa: E402  (torchrun under train.sh: the whole process group dies on timeout)
TRAIN_SH = os.path.join(REPO, "train.sh")
PYTHON = sys.executable
SMOKE = {
    "t2i_2b": "predict2_text2image_training_2b_cosmos_nemo_assets_smoke",
    "t2i_14b": "predict2_text2image_training_14b_cosmos_nemo_assets_smoke",
    "v2w_2b": "predict2_video2world_training_2b_cosmos_nemo_assets_smoke",
    "v2w_14b": "predict2_video2world_training_14b_cosmos_nemo_assets_smoke",
}
# the launcher's own files, as `apply` installs them (repo path -> tree path)
LAUNCHER_FILES = {
    "overlay/train.sh": "train.sh",
    "overlay/scripts/train_preflight.py": "scripts/train_preflight.py",
    "overlay/scripts/train_experiments.py": "scripts/train_experiments.py",
    "overlay/scripts/train_checks.py": "scripts/train_checks.py",
    "overlay/scripts/train_plan.py": "scripts/train_plan.py",
    "overlay/scripts/user_errors.py": "scripts/user_errors.py",
    "overlay/cosmos_predict2/portable/user_error.py": "cosmos_predict2/portable/user_error.py",
    "overlay/scripts/train_report.py": "scripts/train_report.py",
    "overlay/scripts/memory_estimate.py": "scripts/memory_estimate.py",
    "overlay/cosmos_predict2/portable/metrics.py": "cosmos_predict2/portable/metrics.py",
}


def touch(path: str, data: bytes = b"x") -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def make_real_dataset(tree: str, task: str) -> None:
    """The seed experiments' dataset layout (contents irrelevant: only validation reads them)."""
    if task == "video2world":
        touch(f"{tree}/datasets/cosmos_nemo_assets/videos/a.mp4")
        touch(f"{tree}/datasets/cosmos_nemo_assets/t5_xxl/a.pickle")
    else:
        touch(f"{tree}/datasets/cosmos_nemo_assets_images/images/a.jpg")
        touch(f"{tree}/datasets/cosmos_nemo_assets_images/t5_xxl/a.pickle")


def run_train_sh(args: list[str], tree: str | None = None, env: dict | None = None, timeout: int = 900,
                 script: str = TRAIN_SH) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e.pop("COSMOS_DEVICE", None)
    e["PYTHON"] = PYTHON
    if tree is not None:
        e.setdefault("IMAGINAIRE_OUTPUT_ROOT", os.path.join(tree, "outputs"))
    e.update(env or {})
    e = {k: v for k, v in e.items() if v is not None}
    argv = ["bash", script] + ([f"--tree={tree}"] if tree is not None and script == TRAIN_SH else []) + args
    return procgroup.run(argv, timeout=timeout, env=e, cwd=tree if tree is not None else None)


def refused(tree: str, args: list[str], env: dict | None = None, script: str = TRAIN_SH) -> str:
    """train.sh's one `error:` line for args that must be refused before torchrun (the output root stays absent)."""
    out_root = os.path.join(tree, "outputs")
    r = run_train_sh(args, tree=tree, env={"IMAGINAIRE_OUTPUT_ROOT": out_root, **(env or {})}, timeout=120,
                     script=script)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode != 0, (r.stdout, r.stderr)
    assert len(lines) == 1, f"expected one line, got:\n{r.stderr}"
    assert lines[0].startswith("error: "), lines[0]
    assert r.stdout == "", r.stdout
    assert not os.path.exists(out_root), "output root created: the launcher went past validation"
    return lines[0]


def copy_code(src: str, dst: str) -> None:
    """The tree's code without its data: datasets/, checkpoints/, outputs/ at the top level only
    (cosmos_predict2/datasets is a package)."""
    top = {"datasets", "checkpoints", "outputs", ".git"}

    def ignore(d, names):
        at_top = os.path.abspath(d) == os.path.abspath(src)
        return [n for n in names if (at_top and n in top) or n == "__pycache__" or n.endswith(".pyc")]

    shutil.copytree(src, dst, symlinks=True, ignore=ignore)
