#!/usr/bin/env python3
"""Where the device idles inside a training step: the gaps between kernels of a torch profiler trace, with what
the host was doing.

    python bench/trace_gaps.py TRACE.json [--min-gap-ms 0.3] [--top 15]

TRACE.json is a Chrome trace from torch.profiler (train.sh --profile_steps=N writes one per rank; with
COSMOS_PROFILE_STACK=1 it holds Python frames). For each profiled step (ProfilerStep#N) it prints one JSON line:
the step's span, the device's busy time (union of kernels, copies and memsets), the idle time and the largest idle
gaps. A gap is billed to the host's stack at the moment the device ran dry: the named ranges open then (each
callback hook, `callback <Class>.<hook>`, patch callback-hooks-named-in-profiler-traces; FSDP2's hooks) and, with
COSMOS_PROFILE_STACK=1, the innermost Python frames of this project's files and torch's; and to the host call that
launched the kernel ending it. A gap that starts inside a synchronising call (cudaStreamSynchronize,
cudaDeviceSynchronize, cudaMemcpy to host) is the host waiting and is marked `sync`. A launch-bound step shows
most of its time as gaps; a device-bound one does not.

With --compare OTHER.json (e.g. the bare step's trace from `bench_dit.py --profile --profile-trace`), it prints
its steps' rows too (marked trace=b) and one more line (bench=trace_compare): each trace's mean step (span, device busy and idle, kernel count) and the
kernels whose device time per step differs most between the two, by name, so that extra device work and extra idle
time can be told apart.

With --host-in-gaps K, each of a step's K largest gaps also gets `host_in_gap`: the host events of any thread (aten
ops, named ranges, runtime calls, Python frames) that overlap it, longest overlap first, with the thread: what the
host did while the device waited, where host_at_start names nothing.

Each row also has `host_ms`: per host thread (`main`, the one running the loop, and e.g. autograd's backward
thread), the host time spent in named ranges during the step, summed by name with the block index folded
(`FSDP::pre_forward (blocks.N)`): FSDP2's hooks, compiled regions and their backward, autograd nodes, callbacks, the
optimizer. A range nested in one of the same name counts once. Without the Python tracer this is where a
launch-bound step's host time goes.
"""

from __future__ import annotations

import argparse
import bisect
import json
import re
import sys

DEVICE_CATS = ("kernel", "gpu_memcpy", "gpu_memset")
SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")
KEEP_FRAMES = ("cosmos_predict2/", "imaginaire/", "scripts/", "torch/distributed/", "torch/optim/", "torch/nn/utils/",
               "torch/autograd/", "torch/_dynamo/", "torch/_inductor/", "bench/")


def _events(path: str) -> list[dict]:
    with open(path) as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def _frame_name(e: dict) -> str:
    name = e.get("name", "")
    return name.split("/site-packages/")[-1]


def _stack_at(frames: list[dict], starts: list[float], t: float, depth: int = 6) -> list[str]:
    """Innermost `depth` kept Python frames (of the host's main thread) open at time t."""
    i = bisect.bisect_right(starts, t)
    open_frames = [e for e in frames[max(0, i - 4000):i] if e["ts"] <= t <= e["ts"] + e.get("dur", 0)]
    open_frames.sort(key=lambda e: (e["ts"], -e.get("dur", 0)))
    names = [_frame_name(e) for e in open_frames]
    kept = [n for n in names if any(k in n for k in KEEP_FRAMES) or n.startswith(("callback", "FSDP::"))]
    return kept[-depth:]


HOST_RANGES = ("FSDP::", "fsdp::", "callback ", "Optimizer.", "Torch-Compiled Region", "CompiledFunction",
               "autograd::engine::evaluate_function", "## Call CompiledFxGraph")


def _fold(name: str) -> str:
    name = re.sub(r"\((blocks|layers)\.\d+\)", r"(\1.N)", name)
    name = re.sub(r"Torch-Compiled Region: \d+/\d+", "Torch-Compiled Region", name)
    return re.sub(r"## Call CompiledFxGraph \w+ ##", "## Call CompiledFxGraph ##", name)


def host_ranges(events: list[dict], t0: float, t1: float, main_tid, top: int = 15) -> dict:
    """{thread: {range name: host ms}} of the named ranges (HOST_RANGES) that start in [t0, t1)."""
    by_tid: dict = {}
    for e in events:
        if (e.get("ph") == "X" and e.get("cat") in ("cpu_op", "user_annotation") and t0 <= e["ts"] < t1
                and str(e.get("name", "")).startswith(HOST_RANGES)):
            by_tid.setdefault(e.get("tid"), []).append(e)
    out = {}
    for tid, es in by_tid.items():
        es.sort(key=lambda e: (e["ts"], -e.get("dur", 0)))
        open_until: dict = {}  # folded name -> end of its outermost open occurrence
        totals: dict = {}
        for e in es:
            name = _fold(e["name"])
            if open_until.get(name, -1) > e["ts"]:
                continue  # nested in a range of the same name
            open_until[name] = e["ts"] + e.get("dur", 0)
            totals[name] = totals.get(name, 0.0) + e.get("dur", 0) / 1000
        label = "main" if tid == main_tid else f"thread {tid}"
        out[label] = {k: round(v, 3) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])[:top]}
    return out


HOST_CATS = ("cpu_op", "user_annotation", "cuda_runtime", "cuda_driver", "python_function")


def host_in_gap(events: list[dict], g0: float, g1: float, main_tid, top: int = 12) -> list[dict]:
    """The host events overlapping [g0, g1] (trace microseconds), longest overlap first: name, thread, overlap and
    own duration in ms. The step's own range is left out."""
    out = []
    for e in events:
        if e.get("ph") != "X" or e.get("cat") not in HOST_CATS or str(e.get("name", "")).startswith("ProfilerStep#"):
            continue
        a, b = e["ts"], e["ts"] + e.get("dur", 0)
        ov = min(b, g1) - max(a, g0)
        if ov > 0:
            out.append(dict(name=_frame_name(e)[:100], thread="main" if e.get("tid") == main_tid else str(e.get("tid")),
                            overlap_ms=round(ov / 1000, 3), dur_ms=round((b - a) / 1000, 3)))
    out.sort(key=lambda d: (-d["overlap_ms"], d["dur_ms"]))
    return out[:top]


def summarize(events: list[dict], min_gap_ms: float = 0.3, top: int = 15, host_gaps: int = 0) -> list[dict]:
    # the host's step ranges (the trace also holds their device-side copies, cat gpu_user_annotation)
    steps = _steps(events)
    device = [e for e in events if e.get("ph") == "X" and e.get("cat") in DEVICE_CATS]
    runtime = [e for e in events if e.get("ph") == "X" and e.get("cat") in ("cuda_runtime", "cuda_driver")]
    by_corr = {e.get("args", {}).get("correlation"): e for e in runtime}
    # host frames: Python functions (COSMOS_PROFILE_STACK=1) and named ranges (callbacks, FSDP hooks), of the thread
    # that ran the training loop (the one holding the ProfilerStep ranges, else the one with the most frames)
    frames = sorted((e for e in events if e.get("ph") == "X" and (
        e.get("cat") == "python_function"
        or (e.get("cat") == "user_annotation" and not str(e.get("name", "")).startswith("ProfilerStep#")))),
        key=lambda e: e["ts"])
    if frames:
        tids: dict = {}
        for e in frames:
            tids[e.get("tid")] = tids.get(e.get("tid"), 0) + 1
        main = steps[0].get("tid") if steps and steps[0].get("tid") in tids else max(tids, key=tids.get)
        frames = [e for e in frames if e.get("tid") == main]
    starts = [e["ts"] for e in frames]
    syncs = sorted((e["ts"], e["ts"] + e.get("dur", 0), e["name"]) for e in runtime
                   if str(e.get("name", "")).startswith(SYNC_CALLS) and "Async" not in e["name"])
    rows = []
    for st in steps:
        t0, t1 = st["ts"], st["ts"] + st["dur"]
        dev = sorted((e for e in device if t0 <= e["ts"] < t1), key=lambda e: e["ts"])
        busy = _union([(e["ts"], min(e["ts"] + e.get("dur", 0), t1)) for e in dev])
        busy_us = sum(b - a for a, b in busy)
        gaps = []
        prev_end = t0
        for a, b in busy:
            if a - prev_end >= min_gap_ms * 1000:
                nxt = next((e for e in dev if e["ts"] >= a), None)
                launch = by_corr.get((nxt or {}).get("args", {}).get("correlation"))
                in_sync = next((n for s0, s1, n in syncs if s0 <= prev_end + 1 and prev_end < s1), None)
                gaps.append(dict(
                    start_ms=round((prev_end - t0) / 1000, 3), gap_ms=round((a - prev_end) / 1000, 3),
                    sync=in_sync, host_at_start=_stack_at(frames, starts, prev_end + 1) if frames else None,
                    next_kernel=(nxt or {}).get("name", "")[:90],
                    launched_by=_stack_at(frames, starts, launch["ts"]) if (frames and launch) else None,
                    _window=(prev_end, a)))
            prev_end = max(prev_end, b)
        if t1 - prev_end >= min_gap_ms * 1000:
            gaps.append(dict(start_ms=round((prev_end - t0) / 1000, 3), gap_ms=round((t1 - prev_end) / 1000, 3),
                             sync=None, host_at_start=_stack_at(frames, starts, prev_end + 1) if frames else None,
                             next_kernel="(end of step)", launched_by=None))
        gaps.sort(key=lambda g: -g["gap_ms"])
        for i, g in enumerate(gaps):
            window = g.pop("_window", None)
            if i < host_gaps and window is not None:
                g["host_in_gap"] = host_in_gap(events, window[0], window[1], st.get("tid"))
        idle_us = (t1 - t0) - busy_us
        rows.append(dict(bench="trace_gaps", step=st["name"], span_ms=round((t1 - t0) / 1000, 3),
                         device_busy_ms=round(busy_us / 1000, 3), device_idle_ms=round(idle_us / 1000, 3),
                         kernels=len(dev), gaps_over_min=len(gaps),
                         gaps_over_min_ms=round(sum(g["gap_ms"] for g in gaps), 3),
                         top_gaps=gaps[:top],
                         host_ms=host_ranges(events, t0, t1, st.get("tid"), top)))
    return rows


def _steps(events: list[dict]) -> list[dict]:
    return sorted((e for e in events if e.get("ph") == "X" and str(e.get("name", "")).startswith("ProfilerStep#")
                   and e.get("cat") != "gpu_user_annotation"), key=lambda e: e["ts"])


def kernels_per_step(events: list[dict]) -> tuple[dict, int]:
    """{kernel name: [ms per step, launches per step]} over the device work that starts inside the trace's
    ProfilerStep# ranges, and the number of steps."""
    steps = _steps(events)
    spans = [(s["ts"], s["ts"] + s["dur"]) for s in steps]
    table: dict = {}
    for e in events:
        if e.get("ph") != "X" or e.get("cat") not in DEVICE_CATS:
            continue
        if any(a <= e["ts"] < b for a, b in spans):
            row = table.setdefault(str(e.get("name", ""))[:100], [0.0, 0])
            row[0] += e.get("dur", 0) / 1000
            row[1] += 1
    n = max(1, len(steps))
    return {k: [v[0] / n, v[1] / n] for k, v in table.items()}, len(steps)


def compare(rows_a: list[dict], events_a: list[dict], rows_b: list[dict], events_b: list[dict],
            top: int = 30) -> dict:
    """Trace a (e.g. train.sh) against trace b (e.g. the bare step): mean step figures and the kernels whose
    device ms per step differ most."""
    def mean(rows, key):
        return round(sum(r[key] for r in rows) / len(rows), 3) if rows else None

    ka, na = kernels_per_step(events_a)
    kb, nb = kernels_per_step(events_b)
    diffs = []
    for name in set(ka) | set(kb):
        a, b = ka.get(name, [0.0, 0]), kb.get(name, [0.0, 0])
        diffs.append(dict(name=name, ms_a=round(a[0], 3), ms_b=round(b[0], 3), d_ms=round(a[0] - b[0], 3),
                          n_a=round(a[1], 2), n_b=round(b[1], 2)))
    diffs.sort(key=lambda d: -abs(d["d_ms"]))
    side = {}
    for tag, rows, n, k in (("a", rows_a, na, ka), ("b", rows_b, nb, kb)):
        side[tag] = dict(steps=n, span_ms=mean(rows, "span_ms"), device_busy_ms=mean(rows, "device_busy_ms"),
                         device_idle_ms=mean(rows, "device_idle_ms"), kernels=mean(rows, "kernels"),
                         kernel_ms_sum=round(sum(v[0] for v in k.values()), 3))
    only_a = sorted((d for d in diffs if d["n_b"] == 0), key=lambda d: -d["ms_a"])
    return dict(bench="trace_compare", a=side["a"], b=side["b"],
                kernel_ms_only_in_a=round(sum(d["ms_a"] for d in only_a), 3),
                launches_only_in_a=round(sum(d["n_a"] for d in only_a), 2),
                top_diffs=diffs[:top], top_only_in_a=only_a[:top])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace")
    ap.add_argument("--min-gap-ms", type=float, default=0.3)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--host-in-gaps", type=int, default=0, metavar="K",
                    help="for each step's K largest gaps, the host events (any thread) overlapping them")
    ap.add_argument("--compare", default=None, metavar="OTHER.json",
                    help="a second trace (e.g. the bare step's, bench_dit.py --profile-trace) to set beside TRACE")
    a = ap.parse_args(argv)
    events = _events(a.trace)
    rows = summarize(events, a.min_gap_ms, a.top, a.host_in_gaps)
    if not rows:
        print(f"error: no ProfilerStep# ranges in {a.trace}; write the trace with train.sh --profile_steps=N",
              file=sys.stderr)
        return 2
    for r in rows:
        print(json.dumps(r))
    if a.compare:
        other = _events(a.compare)
        other_rows = summarize(other, a.min_gap_ms, a.top)
        if not other_rows:
            print(f"error: no ProfilerStep# ranges in {a.compare}; write it with bench_dit.py --profile "
                  "--profile-trace PATH", file=sys.stderr)
            return 2
        for r in other_rows:
            print(json.dumps(dict(r, trace="b")))  # the other trace's steps too, marked
        print(json.dumps(compare(rows, events, other_rows, other, a.top)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
