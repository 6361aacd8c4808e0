"""The package installed the way a user installs it: the wheel built from this checkout, with the dependencies that
setup.py declares resolved by pip into a NEW venv (no system site-packages, so nothing from the test venv hides a
missing or too-new dependency), then `cosmos-predict2-overlay` run from that venv: `download --help`, `doctor`
(no torch there: fail lines, no traceback), and `download` offline and with a bad model (one error line each).

The dependency wheels are fetched once with `pip download` into ~/.cache/cosmos-predict2-overlay/wheelhouse-<hash
of the requirements> and installed from there with `--no-index`, so later runs need no network. Without network
and without that cache the test skips (saying so)."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.dataprep.dataprep_helpers import assert_one_error_line

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("COSMOS_OVERLAY_CACHE", Path.home() / ".cache" / "cosmos-predict2-overlay"))


def _run(cmd, timeout=300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)


def _requirements(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    return [ln.split(":", 1)[1].strip() for ln in meta.splitlines() if ln.startswith("Requires-Dist:")]


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory, overlay_wheel):
    wheel = overlay_wheel
    reqs = _requirements(wheel)
    # Every dependency is bounded above: a new major release must not reach users untested.
    for req in reqs:
        assert "<" in req, f"{req}: no tested upper bound in setup.py"
    house = CACHE / ("wheelhouse-" + hashlib.sha256("\n".join(sorted(reqs)).encode()).hexdigest()[:16])
    if not (house / ".complete").is_file():
        house.mkdir(parents=True, exist_ok=True)
        r = _run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", house, *reqs],
                 timeout=600)
        if r.returncode != 0:
            pytest.skip(f"cannot fetch the dependency wheels and none are cached in {house}: "
                        f"{(r.stderr.strip().splitlines() or ['?'])[-1]}")
        (house / ".complete").write_text("\n".join(reqs) + "\n")
    venv = tmp_path_factory.mktemp("venv") / "v"
    r = _run([sys.executable, "-m", "venv", "--without-pip", venv])
    assert r.returncode == 0, r.stderr
    py = venv / "bin" / "python"
    # The test venv's pip installs into the new one (--python); --no-index: only the wheel and the wheelhouse.
    r = _run([sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-index", "--find-links", house,
              wheel])
    assert r.returncode == 0, r.stderr[-3000:]
    return venv


def _env(tmp_path: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "PYTHON", "VIRTUAL_ENV")) and k != "HUGGING_FACE_HUB_TOKEN"}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_DISABLE_TELEMETRY="1")
    env.update(extra)
    return env


def test_console_script_help_and_versions(fresh_venv, tmp_path):
    exe = fresh_venv / "bin" / "cosmos-predict2-overlay"
    r = _run([exe, "download", "--help"], env=_env(tmp_path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "--model" in r.stdout and "--target" in r.stdout and "cosmos-predict2-overlay download" in r.stdout
    # The venv holds exactly what setup.py brought: no torch, and the resolved huggingface_hub is in range.
    r = _run([fresh_venv / "bin" / "python", "-c",
              "import importlib.metadata as m, importlib.util as u; print(m.version('huggingface_hub'), "
              "u.find_spec('torch') is None)"], env=_env(tmp_path))
    hub, no_torch = r.stdout.split()
    assert no_torch == "True" and int(hub.split(".")[0]) < 2, r.stdout


def test_doctor_in_a_venv_without_torch(fresh_venv, tmp_path):
    r = _run([fresh_venv / "bin" / "cosmos-predict2-overlay", "doctor"], env=_env(tmp_path), cwd=tmp_path,
             timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stdout + r.stderr, r.stdout + r.stderr
    assert re.search(r"^fail\s+torch\s+not installed", r.stdout, flags=re.M), r.stdout
    assert r.stdout.strip().splitlines()[-1].startswith("error: training cannot start: torch failed")


def test_offline_download_and_bad_model_are_one_line(fresh_venv, tmp_path):
    exe = fresh_venv / "bin" / "cosmos-predict2-overlay"
    r = _run([exe, "download", "--model", "2B-Video2World", "--checkpoint-dir", tmp_path / "ckpt"],
             env=_env(tmp_path, HF_HUB_OFFLINE="1"), cwd=tmp_path, timeout=120)
    line = assert_one_error_line(r)
    assert "HF_HUB_OFFLINE=1" in line and "nvidia/Cosmos-Predict2-2B-Video2World" in line, line
    r = _run([exe, "download", "--model", "bogus"], env=_env(tmp_path), cwd=tmp_path)
    line = assert_one_error_line(r)
    assert r.returncode == 2 and "'bogus'" in line and "2B-Video2World" in line and "t5-11b" in line, line
    assert r.stderr.strip() == line  # no usage block


def test_download_suite_against_the_resolved_huggingface_hub(fresh_venv, tmp_path):
    """tests/download/test_download.py again, its CLI run by the fresh venv's python: the hub release that a user
    gets today (1.x: httpx instead of requests, another offline path) behaves like the one CI pins."""
    env = {**os.environ, "COSMOS_TEST_DOWNLOAD_PYTHON": str(fresh_venv / "bin" / "python")}
    r = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", tmp_path / "t",
              REPO / "tests" / "download" / "test_download.py"], env=env, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:]


def test_doctor_says_what_it_checks_while_it_works():
    """Importing torch can take half a minute on a loaded host: doctor names each slow step on stderr first."""
    r = _run([sys.executable, "-m", "installer", "doctor"], cwd=REPO, timeout=180)
    steps = [ln for ln in r.stderr.splitlines() if ln.startswith("doctor: checking")]
    assert [s.split()[2] for s in steps] == ["torch", "torch_npu,", "libraries..."], r.stderr
    assert "(importing it)" in steps[0] and "doctor:" not in r.stdout


def test_apply_and_verify_with_only_the_declared_dependencies(fresh_venv, tmp_path, upstream_sdist):
    """The patch engine (unidiff) and the sdist source run with what setup.py installs and nothing else."""
    exe = fresh_venv / "bin" / "cosmos-predict2-overlay"
    tree = tmp_path / "tree"
    r = _run([exe, "apply", "--source", upstream_sdist, "--target", tree], env=_env(tmp_path), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    r = _run([exe, "verify", "--target", tree], env=_env(tmp_path), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


def test_hint_names_the_installed_package_and_runs(fresh_venv, tmp_path):
    """overlay/scripts/hints.py run by an interpreter that has the package installed (and is no checkout's venv):
    the hint is `PY -m cosmos_predict2_overlay ... --target TREE`, and that command runs as printed."""
    py = fresh_venv / "bin" / "python"
    tree = tmp_path / "tree"
    (tree / "cosmos_predict2").mkdir(parents=True)
    code = ("import importlib.util as u, sys; s = u.spec_from_file_location('h', sys.argv[1]); "
            "m = u.module_from_spec(s); s.loader.exec_module(m); "
            "print(m.installer('download --model t5-11b --dry-run', sys.argv[2]))")
    r = _run([py, "-c", code, REPO / "overlay" / "scripts" / "hints.py", tree], env=_env(tmp_path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    cmd = r.stdout.strip()
    assert cmd == f"{py} -m cosmos_predict2_overlay download --model t5-11b --dry-run --target {tree}", cmd
    r = _run(["bash", "-c", cmd], env=_env(tmp_path), cwd=tmp_path)
    assert r.returncode == 0 and f"-> {tree}/checkpoints/google-t5/t5-11b" in r.stdout, r.stdout + r.stderr
