"""One place for each decision: the device (portable/device.py) and boolean environment variables (device.env_flag).

doctor (installer/doctor.py) and the launcher's preflight (overlay/scripts/train_preflight.py) load the device layer
by path instead of deciding again; these tests fail if either grows its own rule back (or the overlay, the installer
or a bench/ script does). No test doubles: this host's real torch (no torch_npu, no GPU), COSMOS_DEVICE set through
monkeypatch.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

from installer import doctor

REPO = Path(__file__).resolve().parents[2]
PORTABLE = REPO / "overlay" / "cosmos_predict2" / "portable"


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up there
    try:
        spec.loader.exec_module(mod)
    finally:
        del sys.modules[name]
    return mod


@pytest.fixture()
def tree(tmp_path):
    """A directory shaped like an applied tree as far as preflight's device probe looks (the overlay's own files)."""
    portable = tmp_path / "cosmos_predict2" / "portable"
    portable.mkdir(parents=True)
    for name in ("device.py", "autoload.py", "user_error.py"):
        (portable / name).symlink_to(PORTABLE / name)
    return str(tmp_path)


def _three_answers(tree: str):
    """(device layer, doctor, preflight): the device kind, or the one error line each gives."""
    try:
        layer = _load(PORTABLE / "device.py", "_device_under_test").device_type()
    except RuntimeError as e:
        layer = str(e)
    rows, kind = doctor.checks()
    row = next(r for r in rows if r[1] == "device")
    doc = kind if row[0] != doctor.FAIL else "error: " + row[2]
    preflight = _load(REPO / "overlay" / "scripts" / "train_preflight.py", "_preflight_under_test")
    try:
        pf = preflight.detect_device(tree, dry_run=False)[0]
    except preflight.PreflightError as e:
        pf = str(e)
    return layer, doc, pf


@pytest.mark.parametrize("forced", [None, "cpu", "CPU ", "npu", "cuda", "tpu"])
def test_device_is_decided_once(forced, monkeypatch, tree):
    if forced is None:
        monkeypatch.delenv("COSMOS_DEVICE", raising=False)
    else:
        monkeypatch.setenv("COSMOS_DEVICE", forced)
    layer, doc, pf = _three_answers(tree)
    assert layer == doc == pf, (layer, doc, pf)
    if forced in ("npu", "tpu") or (forced == "cuda" and layer.startswith("error:")):
        assert layer.startswith(f"error: COSMOS_DEVICE={forced}") and "\n" not in layer


def test_dry_run_plans_for_an_absent_forced_device_but_not_a_bad_kind(monkeypatch, tree):
    preflight = _load(REPO / "overlay" / "scripts" / "train_preflight.py", "_preflight_under_test")
    monkeypatch.setenv("COSMOS_DEVICE", "npu")
    kind, count, note = preflight.detect_device(tree, dry_run=True)
    assert (kind, count) == ("npu", None) and note.startswith("not verified on this host: error: COSMOS_DEVICE=npu")
    monkeypatch.setenv("COSMOS_DEVICE", "tpu")
    with pytest.raises(preflight.PreflightError, match="COSMOS_DEVICE=tpu is not a device kind"):
        preflight.detect_device(tree, dry_run=True)


SELECTION = re.compile(r"\b(torch\.(cuda|npu)\.is_available|torch_npu\.npu\.is_available)\s*\(")


def _bench_files() -> list[Path]:
    """bench/'s scripts (benchmarks, parity/, device/), not its recorded results. The ones run inside a patched tree
    import its device layer; bench_ops.py (run before a tree exists) and device/real_size_scripts.py (run from the
    checkout) load one by path. None is allowed a check of its own."""
    bench = REPO / "bench"
    return [p for p in bench.rglob("*") if p.suffix in (".py", ".sh") and "results" not in p.relative_to(bench).parts]


def test_only_the_device_layer_asks_for_devices():
    """Device selection (`torch.cuda.is_available()` / `torch.npu.is_available()`) appears in device.py only."""
    files = [*(REPO / "overlay").rglob("*.py"), *(REPO / "installer").rglob("*.py"), REPO / "overlay" / "train.sh",
             *_bench_files()]
    assert {"bench_dit.py", "parity_dit.py", "cp_parity_cuda.py", "real_size_scripts.py", "gpu_suite.sh"} <= {
        p.name for p in files}
    offenders = [str(p.relative_to(REPO)) for p in files
                 if p.name != "device.py" and SELECTION.search(p.read_text(encoding="utf-8"))]
    assert offenders == []
    assert SELECTION.search((PORTABLE / "device.py").read_text())  # the check itself still sees the real call


BOOL_PARSE = re.compile(r"""in \(\s*["'](1|true|0|false)["']|environ\.get\([^)]*\)\s*==\s*["'](1|0|true)["']""")


def test_boolean_env_vars_have_one_parser():
    dev = _load(PORTABLE / "device.py", "_device_under_test")
    for raw in ("1", "true", "Yes", " ON "):
        assert dev.env_flag("X", environ={"X": raw}) is True
    for raw in ("", "0", "false", "No", "off"):
        assert dev.env_flag("X", default=True, environ={"X": raw}) is False
    assert dev.env_flag("X", environ={}) is False and dev.env_flag("X", default=True, environ={}) is True
    with pytest.raises(ValueError) as e:
        dev.env_flag("COSMOS_X", environ={"COSMOS_X": "maybe"})
    assert str(e.value).startswith("error: COSMOS_X='maybe' is not a boolean (environment).")
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "overlay").rglob("*.py")
                 if p.name != "device.py" and BOOL_PARSE.search(p.read_text(encoding="utf-8"))]
    assert offenders == []
