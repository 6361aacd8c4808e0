"""Time `python -m installer apply` from an already-downloaded sdist (target: <= 5 s), plus verify and revert.

    python bench/bench_apply.py [--sdist PATH] [--repeat 5]

Each command runs as a user runs it (a fresh interpreter), into a fresh temp directory. Prints one JSON object:
seconds per command (median and min over --repeat runs) and the file counts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def run(*args: str) -> float:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "installer", *args], cwd=REPO, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"error: installer {args[0]} failed during the benchmark ({r.stderr.strip()}). Fix it first.")
    return dt


def main() -> int:
    from installer.fetch import download_sdist

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sdist", default=os.environ.get("COSMOS_OVERLAY_SDIST"))
    p.add_argument("--repeat", type=int, default=5)
    a = p.parse_args()
    sdist = a.sdist or download_sdist()  # downloaded once, outside the timing
    times: dict[str, list] = {"apply_fresh": [], "apply_again": [], "verify": [], "revert": [], "apply_in_place": []}
    files = 0
    for _ in range(a.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            tree = os.path.join(tmp, "cosmos-predict2")
            times["apply_fresh"].append(run("apply", "--source", sdist, "--target", tree))
            files = sum(len(f) for _, _, f in os.walk(tree))
            times["apply_again"].append(run("apply", "--target", tree))
            times["verify"].append(run("verify", "--target", tree))
            times["revert"].append(run("revert", "--target", tree))
            times["apply_in_place"].append(run("apply", "--target", tree))
    out = {
        "bench": "installer_apply", "python": platform.python_version(), "machine": platform.machine(),
        "cpus": os.cpu_count(), "repeat": a.repeat, "files_in_tree": files,
        "seconds": {k: {"median": round(statistics.median(v), 3), "min": round(min(v), 3)} for k, v in times.items()},
        "target_seconds": 5.0,
    }
    out["meets_target"] = out["seconds"]["apply_fresh"]["median"] <= out["target_seconds"]
    print(json.dumps(out))
    return 0 if out["meets_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
