"""Step-time breakdown: StepTimingCallback's per-rank phases in metrics.jsonl, step_breakdown's table in the train.sh
report, and --profile_steps writing a torch profiler trace; plus the table's arithmetic on hand-written lines."""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import subprocess
import sys

from .conftest import tree_env

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXP = "predict2_video2world_training_2b_cosmos_nemo_assets_smoke"


def _load(name: str, rel: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, rel))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_breakdown_arithmetic_and_slowest_rank():
    sb = _load("step_breakdown_under_test", "overlay/scripts/step_breakdown.py")

    def ph(d, v, f, o, s):
        return {"data": d, "vae_cond": v, "fwd_bwd": f, "optimizer": o, "step": s}

    rows = [{"iteration": i, "phases_s_per_rank": [ph(0.0, 1.0, 5.0, 0.5, 7.0), ph(1.0, 1.0, 5.0, 0.5, s)]}
            for i, s in ((1, 30.0), (2, 8.0), (3, 8.0), (4, 10.0))]
    bd = sb.summarise(rows, skip=1)
    assert bd["steps"] == 3 and bd["first_iteration"] == 2 and bd["ranks"] == 2
    assert bd["slowest_rank"] == 1  # mean step 26/3 against 7
    p = bd["phases"]
    assert p["data"]["mean_s"] == 1.0 and p["fwd_bwd"]["mean_s"] == 5.0
    assert abs(p["other"]["mean_s"] - (0.5 + 0.5 + 2.5) / 3) < 1e-12  # step - the four phases
    assert abs(p["step"]["mean_s"] - 26 / 3) < 1e-12 and bd["step_max_over_min"] == 10 / 8
    text = sb.render(bd)
    assert "slowest rank 1 of 2" in text and "data wait" in text and "forward+backward" in text
    assert sb.summarise([{"iteration": 1, "step_time_s": 1.0}]) is None  # lines without phases: no table


def test_profile_steps_flag_is_validated():
    r = subprocess.run(["bash", os.path.join(REPO, "train.sh"), f"--EXP={EXP}", "--profile_steps=x", "--dry-run"],
                       capture_output=True, text=True, env={**os.environ, "PYTHON": sys.executable}, timeout=120)
    assert r.returncode != 0
    assert r.stderr.strip().splitlines()[-1].startswith("error: --profile_steps=x is not a non-negative integer")


def test_train_sh_writes_phases_report_table_and_trace(data_tree, tmp_path):
    from .conftest import _make

    # the run writes only under IMAGINAIRE_OUTPUT_ROOT; its data and VAE come from tmp_path
    ds = _make(data_tree, tmp_path / "data", 2)
    vae = data_tree / "checkpoints/smoke/tokenizer.pth"
    if not vae.exists():
        subprocess.run([sys.executable, "-m", "scripts.make_smoke_dataset", "--root", str(tmp_path / "vae")],
                       cwd=data_tree, env=tree_env(data_tree), check=True, capture_output=True, timeout=600)
        vae = tmp_path / "vae/checkpoints/smoke/tokenizer.pth"
    out = tmp_path / "out"
    r = subprocess.run(
        ["bash", str(data_tree / "train.sh"), f"--EXP={EXP}", "--profile_steps=1", "--",
         "trainer.max_iter=4", f"dataloader_train.dataset.dataset_dir={ds}",
         f"dataloader_train.sampler.dataset.dataset_dir={ds}", f"model.config.pipe_config.tokenizer.vae_pth={vae}"],
        cwd=data_tree, env=tree_env(data_tree, PYTHON=sys.executable, IMAGINAIRE_OUTPUT_ROOT=str(out),
                                    COSMOS_PROFILE_STACK="1"),
        capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    metrics = glob.glob(str(out / "**/*.metrics.jsonl"), recursive=True)
    assert len(metrics) == 1
    rows = [json.loads(ln) for ln in open(metrics[0])]
    assert [row["iteration"] for row in rows] == [1, 2, 3, 4]
    for row in rows:
        (ph,) = row["phases_s_per_rank"]
        assert row["phases_clock"] == "synchronised"  # CPU: host stamps (work there is synchronous)
        assert set(ph) == {"data", "vae_cond", "fwd_bwd", "optimizer", "step"}
        assert min(ph.values()) >= 0 and ph["vae_cond"] > 0 and ph["fwd_bwd"] > 0
        assert sum(ph[k] for k in ("data", "vae_cond", "fwd_bwd", "optimizer")) <= ph["step"] + 1e-6
    assert "step breakdown over" in r.stdout and "VAE/conditioning" in r.stdout
    assert "(phase boundaries: synchronised)" in r.stdout
    report = json.load(open(metrics[0][: -len(".metrics.jsonl")] + ".report.json"))
    assert report["step_breakdown"]["slowest_rank"] == 0
    traces = glob.glob(metrics[0][: -len(".metrics.jsonl")] + ".trace-rank0.json")
    events = json.load(open(traces[0]))["traceEvents"]
    assert len(traces) == 1 and events
    # one ProfilerStep# range per profiled step (torch writes them only with a schedule), Python frames with
    # COSMOS_PROFILE_STACK=1, and bench/trace_gaps.py reads it: on CPU no kernel, the whole step is host time
    assert [e["name"] for e in events if str(e.get("name", "")).startswith("ProfilerStep#")] == ["ProfilerStep#0"]
    assert any(e.get("cat") == "python_function" for e in events)
    # every callback hook is a named range (patch callback-hooks-named-in-profiler-traces)
    names = {e["name"] for e in events if e.get("cat") == "user_annotation"}
    assert {"callback GradClip.on_before_optimizer_step", "callback StepTimingCallback.on_training_step_end"} <= names
    g = subprocess.run([sys.executable, os.path.join(REPO, "bench", "trace_gaps.py"), traces[0]],
                       capture_output=True, text=True, timeout=300)
    assert g.returncode == 0, g.stderr
    (row,) = [json.loads(ln) for ln in g.stdout.splitlines()]
    assert row["step"] == "ProfilerStep#0" and row["kernels"] == 0 and row["device_busy_ms"] == 0
    assert row["span_ms"] > 0 and row["top_gaps"][0]["host_at_start"]
    assert "training loader: endless batch sampler" in r.stdout  # the trainer hook (patch 0029) is live


# StepTimingCallback driven by hand in the trainer's hook order, its device marks given by a TEST DOUBLE of a device
# stream (not torch: a virtual host clock and one in-order stream; an event's time is when the stream reaches it,
# i.e. after the work queued before it and not before the host recorded it). Checks the event clock's meaning: a
# loader wait hidden behind queued device work is ~0, one that leaves the device idle is that idle time; the phases
# add up to the step; nothing synchronizes the device during the steps; figures are read when the line is written.
STREAM_DOUBLE_PROBE = r'''
import json, sys, types
import cosmos_predict2.portable.step_timing as st

class Stream:  # TEST DOUBLE of one device stream on a virtual clock (seconds)
    host = 0.0; tail = 0.0; device_syncs = 0; event_waits = 0
    @classmethod
    def launch(cls, device_s):  # host queues device_s of work (1 ms of host time per launch)
        cls.tail = max(cls.tail, cls.host) + device_s
        cls.host += 0.001

class Event:
    def __init__(self): self.t = None
    def record(self): self.t = max(Stream.host, Stream.tail)
    def synchronize(self): Stream.event_waits += 1; Stream.host = max(Stream.host, self.t)
    def elapsed_time(self, other): return (other.t - self.t) * 1e3

def device_synchronize(): Stream.device_syncs += 1; Stream.host = max(Stream.host, Stream.tail)
sync_mode = sys.argv[1] == "sync"
st._device = types.SimpleNamespace(timing_event=Event, synchronize=device_synchronize,
                                   env_flag=lambda name, default=False: sync_mode if name == "COSMOS_METRICS_SYNC" else default)
pipe = types.SimpleNamespace(get_data_and_condition=lambda: Stream.launch(0.2))
cb = st.StepTimingCallback(every_n=int(sys.argv[2]))
cb.on_train_start(types.SimpleNamespace(pipe=pipe), 0)
out = []

def read(row):
    fields, waits0 = row.pop("fields"), Stream.event_waits
    if fields:
        row["phases"] = fields["phases_s_per_rank"](gather=True)[0]
        row["waits_in_read"] = Stream.event_waits - waits0

for it, loader_s in enumerate((0.05, 0.1, 2.0, 0.1)):
    syncs0 = Stream.device_syncs
    tail_before = Stream.tail
    cb.on_before_dataloading(it); Stream.host += loader_s; host_after_loader = Stream.host; cb.on_after_dataloading(it)
    cb.on_before_forward(it)
    pipe.get_data_and_condition()
    Stream.launch(0.3)  # forward + backward
    cb.on_after_backward(None, it)
    cb.on_before_optimizer_step(None, None, None, None, it)
    Stream.launch(0.1)
    cb.on_training_step_batch_end(None, None, None, None, it)
    fields = st.take_fields()
    row = {"it": it, "syncs": Stream.device_syncs - syncs0, "stall": max(0.0, host_after_loader - tail_before),
           "clock": fields.get("phases_clock"), "fields": fields}
    if out:  # as TrainMetricsCallback: the line of the step before is written (its figures read) now
        read(out[-1])
    out.append(row)
read(out[-1])
print(json.dumps(out))
'''


def _stream_probe(tree, mode: str, every_n: int) -> list[dict]:
    r = subprocess.run([sys.executable, "-c", STREAM_DOUBLE_PROBE, mode, str(every_n)], cwd=tree,
                       env=tree_env(tree), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_step_phases_from_device_events_without_synchronizing(data_tree):
    rows = _stream_probe(data_tree, "events", 1)
    for row in rows:
        ph = row["phases"]
        assert row["clock"] == "device events" and row["syncs"] == 0  # nothing waits for the device in a step
        assert row["waits_in_read"] >= 1  # the events are read when the line is written
        assert abs(ph["vae_cond"] - 0.2) < 1e-9 and abs(ph["fwd_bwd"] - 0.3) < 1e-9 and abs(ph["optimizer"] - 0.1) < 1e-9
        # the loader's wait counts only where the device ran dry: the first step (nothing queued) and the 2 s one
        assert abs(ph["data"] - row["stall"]) < 1e-9, row
        assert abs(ph["step"] - (ph["data"] + 0.6)) < 1e-9  # no other work: the phases add up to the step
    assert [round(r["phases"]["data"], 3) for r in rows] == [0.05, 0.0, round(rows[2]["stall"], 3), 0.0]
    assert rows[2]["stall"] > 1.0  # the 2 s loader wait outlasted the queued work


def test_step_phases_synchronised_mode_and_every_n(data_tree):
    rows = _stream_probe(data_tree, "sync", 1)  # COSMOS_METRICS_SYNC=1: the host's view, as before events
    assert all(r["clock"] == "synchronised" and r["syncs"] == 6 for r in rows[1:]), rows
    rows = _stream_probe(data_tree, "events", 2)  # only iterations 0 and 2 timed; untimed steps leave no fields
    assert [("phases" in r) for r in rows] == [True, False, True, False]
    assert all(r["syncs"] == 0 for r in rows)
    # the timed step after an untimed one starts at that step's end (iteration 1's end mark)
    assert abs(rows[2]["phases"]["step"] - (rows[2]["phases"]["data"] + 0.6)) < 1e-9


# The step clock of the tree's metrics (portable/metrics.py StepClock) with the device layer on the torch_npu TEST
# DOUBLE (tests/doubles/fake_torch_npu.py: torch.npu.Event records the host clock, since the double's device work
# runs when called; torch.npu.synchronize is counted). On NPU a step's end must be an event, not a synchronize: a
# per-step synchronize is one of the defects of the earlier Ascend adaptation (reference NPU_AND_ANCHOR.md).
NPU_CLOCK_PROBE = r'''
import importlib.util, json, sys, time
import torch
spec = importlib.util.spec_from_file_location("fake_torch_npu", sys.argv[1])
fake = importlib.util.module_from_spec(spec); spec.loader.exec_module(fake)
sys.modules["torch_npu"] = fake
torch.npu = fake.npu
from cosmos_predict2.portable import device
from cosmos_predict2.portable.metrics import StepClock
clock = StepClock()
clock.start(0)
n0 = len(fake.CALLS)
for it in (1, 2, 3):
    time.sleep(0.03 * it)  # the step's work
    clock.mark(it)
ops = [c["op"] for c in fake.CALLS[n0:]]
times = [clock.step_time(it) for it in (1, 2, 3)]
print(json.dumps(dict(device=device.DEVICE_TYPE, ops=ops, times=times,
                      reads=[c["op"] for c in fake.CALLS[n0 + len(ops):]])))
'''


def test_step_clock_on_npu_marks_step_ends_with_events(data_tree):
    double = os.path.join(REPO, "tests", "doubles", "fake_torch_npu.py")  # the torch_npu TEST DOUBLE
    r = subprocess.run([sys.executable, "-c", NPU_CLOCK_PROBE, double], cwd=data_tree,
                       env=tree_env(data_tree, COSMOS_DEVICE="npu"), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["device"] == "npu"
    assert out["ops"] == ["event_record"] * 3  # the steps' ends: three events, no synchronize
    assert "synchronize" not in out["reads"] and out["reads"].count("event_synchronize") == 3  # read: each event
    for want, got in zip((0.03, 0.06, 0.09), out["times"]):
        assert want <= got < want + 0.05, out["times"]
