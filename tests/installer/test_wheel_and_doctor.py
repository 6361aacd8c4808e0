"""Packaging (never a top-level `installer`), the installed entry point, and doctor against support.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

from inst_helpers import REPO, one_error_line
from installer import doctor, pin, support

PIN = pin.default().commit


def test_wheel_has_no_top_level_installer(overlay_wheel):
    names = zipfile.ZipFile(overlay_wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert "installer" not in tops
    assert {t for t in tops if not t.endswith(".dist-info")} == {"cosmos_predict2_overlay"}
    for need in ("cosmos_predict2_overlay/cli.py", "cosmos_predict2_overlay/pin.py",
                 f"cosmos_predict2_overlay/_data/patches/{PIN}/manifest.tsv",
                 f"cosmos_predict2_overlay/_data/patches/{PIN}/upstream.toml",
                 "cosmos_predict2_overlay/_data/overlay/train.sh",
                 f"cosmos_predict2_overlay/_data/patches/{PIN}/series",
                 "cosmos_predict2_overlay/_data/overlay/cosmos_predict2/portable/device.py"):
        assert need in names, need
    assert "cosmos_predict2_overlay/_data/train.sh" not in names  # the launcher ships as an overlay file only
    launcher = zipfile.ZipFile(overlay_wheel).getinfo("cosmos_predict2_overlay/_data/overlay/train.sh")
    assert (launcher.external_attr >> 16) & 0o111, "train.sh lost its executable bit in the wheel"
    entry = [n for n in names if n.endswith("entry_points.txt")]
    text = zipfile.ZipFile(overlay_wheel).read(entry[0]).decode()
    assert "cosmos-predict2-overlay = cosmos_predict2_overlay.cli:main" in text
    meta = zipfile.ZipFile(overlay_wheel).read([n for n in names if n.endswith("METADATA")][0]).decode()
    assert "Requires-Dist: GitPython" in meta and "Requires-Dist: unidiff" in meta and "torch" not in meta


def test_installed_package_applies_from_its_own_data(overlay_wheel, tmp_path, upstream_sdist):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(overlay_wheel)],
                   check=True)
    env = {**os.environ, "PYTHONPATH": str(site)}
    tree = tmp_path / "t"
    r = subprocess.run([sys.executable, "-m", "cosmos_predict2_overlay", "apply", "--source", str(upstream_sdist),
                        "--target", str(tree)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r2 = subprocess.run([sys.executable, "-m", "installer", "digest", "--target", str(tree)], cwd=REPO,
                        capture_output=True, text=True)
    r3 = subprocess.run([sys.executable, "-m", "cosmos_predict2_overlay", "digest", "--from-source",
                         str(upstream_sdist)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r2.stdout == r3.stdout and len(r2.stdout.strip()) == 64
    r = subprocess.run([sys.executable, "-m", "cosmos_predict2_overlay", "nope"], cwd=tmp_path, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "cosmos-predict2-overlay" in one_error_line(r)


def test_doctor_exit_code_matches_fail_lines():
    r = subprocess.run([sys.executable, "-m", "installer", "doctor", "--json"], cwd=REPO, capture_output=True,
                       text=True)
    report = json.loads(r.stdout)
    fails = [c for c in report["checks"] if c["status"] == "fail"]
    assert (r.returncode == 0) == (not fails) == report["can_train"]
    names = {c["component"] for c in report["checks"]}
    assert {"python", "torch", "torch_npu", "device", "transformers", "diffusers", "megatron-core",
            "video decoding", "ffmpeg", "apex"} <= names


def test_doctor_guards_a_broken_torch_npu(tmp_path):
    """A torch_npu that is installed but cannot import (no CANN): a warning, never a crash."""
    pkg = tmp_path / "torch_npu"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise OSError('libhccl.so: cannot open shared object file')\n")
    dist = tmp_path / "torch_npu-2.7.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: torch_npu\nVersion: 2.7.1\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "installer", "doctor", "--json"], cwd=REPO, env=env,
                       capture_output=True, text=True)
    row = next(c for c in json.loads(r.stdout)["checks"] if c["component"] == "torch_npu")
    assert row["status"] == "warn" and "libhccl.so" in row["detail"]


def test_doctor_reads_cann_version(tmp_path, monkeypatch):
    (tmp_path / "version.cfg").write_text("# version: 1.0\nruntime_running_version=[8.3.RC1:8.3.RC1]\n")
    monkeypatch.setenv("ASCEND_TOOLKIT_HOME", str(tmp_path))
    assert doctor.cann_version() == ("8.3.RC1", str(tmp_path / "version.cfg"))
    rows, _ = doctor.checks()
    row = next(r for r in rows if r[1] == "CANN")
    assert row[0] == "ok"
    (tmp_path / "version.cfg").write_text("runtime_running_version=[8.0.RC2:8.0.RC2]\n")
    row = next(r for r in doctor.checks()[0] if r[1] == "CANN")
    assert row[0] == "warn" and support.CANN in row[2]


def test_support_table_is_the_single_source():
    table = support.table_markdown()
    assert "3.10 – 3.11" in table and support.CANN in table and "2.7.1 with torch 2.7.1" in table
    r = subprocess.run([sys.executable, "-m", "installer", "doctor", "--table"], cwd=REPO, capture_output=True,
                       text=True)
    assert r.stdout.strip() == table


def test_version_parsing():
    assert doctor._ver("2.7.1+cpu") == (2, 7, 1)
    assert doctor._ver("2.13.0.dev20250101") == (2, 13, 0)
    assert doctor._ver("8") == (8, 0, 0)
