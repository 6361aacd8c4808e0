"""`import torch` failing because torch_npu autoloads without CANN sourced, reproduced for real: a temp directory
on PYTHONPATH holds a torch_npu package whose import raises what torch_npu raises without CANN's libraries, and a
dist-info with the wheel's entry point (`[torch.backends] torch_npu = torch_npu:_autoload`, checked against the
real wheel in test_wheel_contract.py). torch itself then fails at import (torch >= 2.5). This is a fixture of a
broken installation, not a stand-in for the code under test: doctor, the device layer and train.sh run unchanged.
Also doctor's exact torch_npu / CANN pairing and its SoC line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CAUSE = "libhccl.so: cannot open shared object file: No such file or directory"


def broken_torch_npu(tmp: Path, version: str = "2.7.1", entry_point: bool = True) -> dict:
    pkg = tmp / "torch_npu"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(f"raise ImportError({CAUSE!r})\n")
    dist = tmp / f"torch_npu-{version}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torch_npu\nVersion: {version}\n")
    if entry_point:
        (dist / "entry_points.txt").write_text("[torch.backends]\ntorch_npu = torch_npu:_autoload\n")
    env = {k: v for k, v in os.environ.items() if k not in ("COSMOS_DEVICE", "TORCH_DEVICE_BACKEND_AUTOLOAD")}
    env["PYTHONPATH"] = str(tmp)
    return env


def test_the_fixture_really_breaks_import_torch(tmp_path):
    env = broken_torch_npu(tmp_path)
    r = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "Failed to load the backend extension: torch_npu" in r.stderr


def _check_line(line: str) -> None:
    assert "\n" not in line
    assert "autoloads torch_npu" in line and CAUSE in line
    assert "source /usr/local/Ascend/ascend-toolkit/set_env.sh" in line
    assert "TORCH_DEVICE_BACKEND_AUTOLOAD=0" in line


def test_doctor_diagnoses_it_in_one_line(tmp_path):
    env = broken_torch_npu(tmp_path)
    r = subprocess.run([sys.executable, "-m", "installer", "doctor", "--json"], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 1, r.stderr
    row = [c for c in json.loads(r.stdout)["checks"] if c["component"] == "torch"][-1]  # after the version row
    assert row["status"] == "fail"
    _check_line(row["detail"])
    # and TORCH_DEVICE_BACKEND_AUTOLOAD=0, as suggested, gets torch back
    r = subprocess.run([sys.executable, "-m", "installer", "doctor", "--json"], cwd=ROOT,
                       env={**env, "TORCH_DEVICE_BACKEND_AUTOLOAD": "0"}, capture_output=True, text=True)
    rows = [c for c in json.loads(r.stdout)["checks"] if c["component"] == "torch"]
    assert all(c["status"] != "fail" for c in rows), rows


def test_device_layer_raises_the_same_line(tmp_path):
    env = broken_torch_npu(tmp_path)
    code = ("import importlib.util as u, sys\n"
            f"s = u.spec_from_file_location('d', {str(ROOT / 'overlay/cosmos_predict2/portable/device.py')!r})\n"
            "m = u.module_from_spec(s)\n"
            "try:\n    s.loader.exec_module(m)\n"
            "except RuntimeError as e:\n    print(e); sys.exit(3)\n")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == 3, r.stderr
    line = r.stdout.strip()
    assert line.startswith("error: ") and line.endswith(".")
    _check_line(line)


def test_train_sh_says_it_in_one_line(tmp_path):
    sys.path.insert(0, str(ROOT / "tests" / "launcher"))
    from launcher_helpers import SMOKE, run_train_sh, touch

    tree = tmp_path / "tree"
    touch(f"{tree}/cosmos_predict2/configs/base/config.py", b"")
    portable = tree / "cosmos_predict2" / "portable"
    for name in ("device.py", "autoload.py"):
        touch(str(portable / name), (ROOT / "overlay/cosmos_predict2/portable" / name).read_bytes())
    for sub in ("cosmos_nemo_assets_images/images/a.jpg", "cosmos_nemo_assets_images/t5_xxl/a.pickle"):
        touch(f"{tree}/datasets/smoke/{sub}")  # the layout the launcher validates before the device
    touch(f"{tree}/checkpoints/smoke/tokenizer.pth")
    env = broken_torch_npu(tmp_path / "site")
    r = run_train_sh([f"--EXP={SMOKE['t2i_2b']}", "--nproc_per_node=1"], tree=str(tree), env=env, timeout=300)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    _check_line(lines[0])


def test_doctor_pairs_torch_npu_and_cann_exactly(tmp_path, monkeypatch):
    """2.7.1 pairs with CANN 8.3.RC1 and 2.7.1.post2 with CANN 8.5.0 (the wheels' README tables); an unknown
    release fails naming the table. The torch_npu here is an importable-but-empty installation fixture (no entry
    point): only its version is under test."""
    from installer import doctor

    for version, cann, status in (("2.7.1", "8.3.RC1", "ok"), ("2.7.1.post2", "8.5.0", "ok"),
                                  ("2.7.1.post2", "8.3.RC1", "fail"), ("2.7.1", "8.5.0", "fail")):
        site = tmp_path / f"{version}-{cann}"
        env = broken_torch_npu(site, version=version, entry_point=False)
        (site / "cann").mkdir()
        (site / "cann" / "version.cfg").write_text(f"runtime_running_version=[{cann}:{cann}]\n")
        env["ASCEND_TOOLKIT_HOME"] = str(site / "cann")
        r = subprocess.run([sys.executable, "-m", "installer", "doctor", "--json"], cwd=ROOT, env=env,
                           capture_output=True, text=True)
        rows = {c["component"]: c for c in json.loads(r.stdout)["checks"]}
        assert rows["CANN"]["status"] == status, (version, cann, rows["CANN"])
        if status == "fail":
            assert f"pairs with CANN {'8.5.0' if version.endswith('post2') else '8.3.RC1'}" in rows["CANN"]["detail"]
    status, _, detail = doctor.torch_npu_version_check("2.7.1.post4", "2.7.1")
    assert status == "fail" and "2.7.1.post2 = torch 2.7.1 + CANN 8.5.0" in detail
    status, _, detail = doctor.torch_npu_version_check("2.7.1", "2.8.0")
    assert status == "fail" and "built for torch 2.7.1" in detail


@pytest.mark.parametrize("soc,status,words", [
    ("Ascend910B3", "ok", "Atlas A2 training"),
    ("Ascend910_9392", "ok", "Atlas A3 training"),
    ("Ascend910A", "warn", "no npu_fusion_attention"),
    ("Ascend310P3", "fail", "not an Ascend training part"),
])
def test_doctor_names_the_npu_part(soc, status, words):
    """Uses the torch_npu TEST DOUBLE's torch.npu stand-in (tests/doubles/fake_torch_npu.py) reporting `soc`."""
    import importlib.util
    from types import SimpleNamespace

    from installer import doctor

    spec = importlib.util.spec_from_file_location("fake_torch_npu_doctor", ROOT / "tests/doubles/fake_torch_npu.py")
    fake = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fake)
    fake.DEVICE_NAME = soc
    got = doctor.npu_soc_check(SimpleNamespace(npu=fake.npu))
    assert got[0] == status and words in got[2] and soc in got[2]
    if soc == "Ascend910A":
        assert "'half' mode" in got[2]
