"""`doctor`: check this host against support.py. Exit 0 iff training can start (no 'fail' line).

The device is the device layer's decision (overlay/cosmos_predict2/portable/device.py, loaded by path), COSMOS_DEVICE
included; torch_npu is imported there, inside a guard: a broken CANN makes its import raise anything.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import json
import os
import re
import sys

from . import paths, support

OK, WARN, FAIL = "ok", "warn", "fail"


def _ver(text: str) -> tuple:
    """'2.7.1+cpu' -> (2, 7, 1); '2.13.0.dev20250101' -> (2, 13, 0)."""
    nums = re.findall(r"\d+", text.split("+")[0])[:3]
    return tuple(int(n) for n in nums) + (0,) * (3 - len(nums))


def _dist(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def cann_version() -> tuple[str | None, str]:
    """(version, where) from the toolkit's version files, or (None, why)."""
    homes = [os.environ.get("ASCEND_TOOLKIT_HOME"), "/usr/local/Ascend/ascend-toolkit/latest"]
    for home in filter(None, homes):
        for cfg in ("version.cfg", "toolkit/version.info", "compiler/version.info"):
            path = os.path.join(home, cfg)
            if os.path.isfile(path):
                with open(path, encoding="utf-8", errors="replace") as f:
                    text = f.read()
                m = re.search(r"\d+\.\d+\.(?:RC\d+|T\d+|\d+)(?:\.alpha\d+)?", text)
                if m:
                    return m.group(0), path
    return None, "no CANN toolkit (ASCEND_TOOLKIT_HOME or /usr/local/Ascend/ascend-toolkit/latest)"


def torch_import_failure(exc: BaseException) -> str:
    """The detail line for a failed `import torch`: the autoload diagnosis shared with the device layer
    (overlay/cosmos_predict2/portable/autoload.py, loaded by path: torch cannot be imported) when a backend
    extension such as torch_npu broke it, else the exception itself."""
    path = os.path.join(paths.overlay_dir(), "cosmos_predict2", "portable", "autoload.py")
    try:
        spec = importlib.util.spec_from_file_location("_cosmos_overlay_autoload", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        line = mod.diagnose(exc)
    except OSError:  # resources missing: fall back to the raw exception
        line = None
    if line:
        return line[len("error: "):] if line.startswith("error: ") else line
    return f"import failed: {type(exc).__name__}: {exc}"[:200]


def device_layer():
    """overlay/cosmos_predict2/portable/device.py, loaded by path (the installer cannot import the tree's package):
    doctor reports the device the training would run on, decided by the same code. Raises what the layer raises
    (RuntimeError, one line, when COSMOS_DEVICE names a bad or absent device)."""
    path = os.path.join(paths.overlay_dir(), "cosmos_predict2", "portable", "device.py")
    spec = importlib.util.spec_from_file_location("_cosmos_overlay_device", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def npu_soc_check(torch) -> tuple[str, str, str]:
    """(status, 'npu part', detail) for the NPU's SoC (torch.npu.get_device_name): Atlas A2/A3 training ok, the
    first Atlas training series (910A) a warning naming what is missing there, anything else a failure."""
    try:
        soc = str(torch.npu.get_device_name(0))
    except Exception as e:  # noqa: BLE001 - driver errors of any kind
        return WARN, "npu part", f"SoC name unreadable ({type(e).__name__}: {e})"[:200]
    product = support.npu_product(soc)
    if product in support.NPU_TRAINING_PRODUCTS:
        return OK, "npu part", f"{soc} ({product})"
    if product is not None:
        return WARN, "npu part", f"{soc} ({product}): {support.NPU_LIMITED[product]}"
    return FAIL, "npu part", (f"{soc} is not an Ascend training part this overlay supports "
                              f"(supported: {', '.join(support.NPU_TRAINING_PRODUCTS)})")


def torch_npu_version_check(npu_v: str, torch_v: str) -> tuple[str, str, str]:
    """torch_npu must be a release of the support table, built for the installed torch."""
    row = support.TORCH_NPU.get(npu_v)
    listing = "; ".join(f"torch_npu {n} = torch {t} + CANN {c}" for n, (t, c) in support.TORCH_NPU.items())
    if row is None:
        return FAIL, "torch_npu", f"{npu_v} is not in the support table ({listing})"
    if _ver(torch_v) != _ver(row[0]):
        return FAIL, "torch_npu", f"{npu_v} is built for torch {row[0]}, not {torch_v} ({listing})"
    return OK, "torch_npu", f"{npu_v} (torch {row[0]}, CANN {row[1]})"


def _progress(what: str) -> None:
    """One progress line on stderr before each slow step (importing torch alone can take half a minute)."""
    print(f"doctor: checking {what}...", file=sys.stderr, flush=True)


def compute_dtype_row(device: str, environ: dict | None = None) -> tuple[str, str, str]:
    """The overlay's compute-dtype policy (overlay/cosmos_predict2/portable/precision.py) on this host: what the
    _smoke experiments (and the smoke run) will compute in, the CPU capability and whether bf16 is native."""
    environ = os.environ if environ is None else environ
    path = os.path.join(paths.overlay_dir(), "cosmos_predict2", "portable", "precision.py")
    try:
        spec = importlib.util.spec_from_file_location("_cosmos_overlay_precision", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        d = mod.decide(device, choice=environ.get(mod.ENV))
    except ValueError as e:  # COSMOS_CPU_DTYPE holds something else than auto/fp32/bf16: already one line
        return FAIL, "compute dtype", str(e)
    except Exception as e:  # noqa: BLE001 - a probe; doctor reports, never crashes
        return WARN, "compute dtype", f"not determined ({type(e).__name__}: {e})"[:200]
    detail = d.line()[len("compute dtype "):] + "; the smoke run and the _smoke experiments use it"
    if d.device == "cpu" and d.dtype_name == "bfloat16" and not d.native_bf16:
        return WARN, "compute dtype", detail + ", but emulated bf16 is 100-200x slower than fp32 here (unset it)"
    return OK, "compute dtype", detail


def checks() -> tuple[list, str]:
    """[(status, component, detail)], device kind."""
    out = []
    py = sys.version_info[:2]
    lo, hi = support.PYTHON
    pv = f"{py[0]}.{py[1]}"
    if lo <= py <= hi:
        out.append((OK, "python", pv))
    else:
        out.append((WARN if py > hi else FAIL, "python", f"{pv} (supported {lo[0]}.{lo[1]}–{hi[0]}.{hi[1]})"))

    device, count = "cpu", 0
    tv = _dist("torch")
    if tv is None:
        out.append((FAIL, "torch", "not installed (pip install torch, see requirements/)"))
        return out, "none"
    t = _ver(tv)
    tlo, thi = support.TORCH
    if t < tlo:
        out.append((FAIL, "torch", f"{tv} (needs >= {'.'.join(map(str, tlo))})"))
    elif t > thi:
        out.append((WARN, "torch", f"{tv} (tested up to {thi[0]}.{thi[1]})"))
    else:
        out.append((OK, "torch", tv))
    _progress(f"torch {tv} (importing it)")
    try:
        import torch
    except Exception as e:  # a broken install: report, do not crash
        out.append((FAIL, "torch", torch_import_failure(e)))
        return out, "none"

    _progress("torch_npu, CANN and devices")
    npu_v = _dist("torch-npu") or _dist("torch_npu")
    cann, cann_where = cann_version()
    dev, device_fail = None, None
    try:  # the device layer's own detection (COSMOS_DEVICE included), never a second rule here
        dev = device_layer()
        device, count = dev.device_type(), dev.device_count()
    except BaseException as e:  # noqa: BLE001 - a forced absent device, or torch_npu raising anything without CANN
        if isinstance(e, KeyboardInterrupt):
            raise
        line = str(e).splitlines()[0] if str(e) else type(e).__name__
        device_fail = (line[len("error: "):] if line.startswith("error: ") else f"{type(e).__name__}: {line}")[:300]
    if npu_v is None or importlib.util.find_spec("torch_npu") is None:
        out.append((OK if cann is None else WARN, "torch_npu",
                    "not installed" + (" but CANN is present: pip install torch_npu for NPU training" if cann else "")))
    elif dev is not None and dev.npu_import_error():
        out.append((WARN, "torch_npu", f"{npu_v} installed but import failed: {dev.npu_import_error()}"[:200]))
    else:
        out.append(torch_npu_version_check(npu_v, tv))
        if device == "npu":
            out.append(npu_soc_check(torch))
    if cann is not None:
        want = support.cann_for_torch_npu(npu_v) if npu_v else None
        if want is not None:  # an installed torch_npu names its CANN exactly
            out.append((OK if cann == want else FAIL, "CANN", f"{cann} ({cann_where})" + (
                "" if cann == want else f"; torch_npu {npu_v} pairs with CANN {want}: install that CANN, or the "
                f"torch_npu release for CANN {cann} if the support table has one")))
        else:
            out.append((OK if cann == support.CANN else WARN, "CANN", f"{cann} ({cann_where})"
                        + ("" if cann == support.CANN else f"; supported {support.CANN}")))
    elif device == "npu":
        out.append((FAIL, "CANN", cann_where))

    if device_fail is not None:
        device = "none"
        out.append((FAIL, "device", device_fail))
    elif device == "cpu":
        out.append((WARN, "device", f"cpu: {support.DEVICES['cpu']}"))
    else:
        out.append((OK, "device", f"{device} x{count}: {support.DEVICES[device]}"))
    if device_fail is None:
        out.append(compute_dtype_row(device))

    _progress("libraries")
    for dist, mod, minimum, required, why in support.LIBRARIES:
        v = _dist(dist)
        if v is None or importlib.util.find_spec(mod.split(".")[0]) is None:
            out.append((FAIL if required else WARN, dist, f"not installed ({why})"))
        elif _ver(v) < _ver(minimum):
            out.append((FAIL if required else WARN, dist, f"{v} (needs >= {minimum})"))
        else:
            out.append((OK, dist, v))
    dec = [m for m in support.VIDEO_DECODERS if importlib.util.find_spec(m) is not None]
    out.append((OK, "video decoding", ", ".join(dec)) if dec else
               (FAIL, "video decoding", f"none of {', '.join(support.VIDEO_DECODERS)} (pip install decord or av)"))
    ff = [m for m in support.FFMPEG_PROVIDERS if importlib.util.find_spec(m) is not None]
    out.append((OK, "ffmpeg", "via " + ", ".join(ff)) if ff else
               (WARN, "ffmpeg", "no av or imageio-ffmpeg: video writing will fail (pip install av)"))
    for mod, why in support.OPTIONAL.items():
        have = importlib.util.find_spec(mod) is not None
        out.append((OK, mod, ("installed; " if have else "") + why))
    return out, device


def main(as_json: bool = False, table: bool = False) -> int:
    if table:
        print(support.table_markdown())
        return 0
    rows, device = checks()
    bad = [c for s, c, _ in rows if s == FAIL]
    if as_json:
        print(json.dumps({"device": device, "can_train": not bad,
                          "checks": [{"status": s, "component": c, "detail": d} for s, c, d in rows]}))
    else:
        for s, c, d in rows:
            print(f"{s:<5} {c:<18} {d}")
        if bad:
            print(f"error: training cannot start: {', '.join(bad)} failed (doctor). Fix the 'fail' lines above.")
        else:
            print(f"training can start on {device}")
    return 1 if bad else 0
