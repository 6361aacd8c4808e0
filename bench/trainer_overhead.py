#!/usr/bin/env python3
"""Per-step host work of upstream's trainer vs the bare DiT step: aten ops dispatched and sync points, by phase.

Run from the root of a patched tree (`python -m installer apply ... --target TREE; cd TREE`):

    python /path/to/bench/trainer_overhead.py                      # CPU: tiny Text2Image smoke experiment + tiny bare step
    python /path/to/bench/trainer_overhead.py --full                # GPU: the real 2B Text2Image experiment + 2B bare step
    python /path/to/bench/trainer_overhead.py --side trainer -- trainer.logging_iter=1   # extra trainer overrides

Both sides run the same net (Text2Image DiT; tiny = 2 blocks, 64 channels) in the same dtype: bf16 when counting
(the ops of the bf16 path a device runs: fp32 masters, LowPrecisionCallback), with --time the compute-dtype policy's
(fp32 on CPUs without native bf16, where bf16 is 100-200x slower; COSMOS_CPU_DTYPE overrides both). Counting runs
under one TorchDispatchMode, with torch.compile off (COSMOS_DISABLE_COMPILE=1: eager op counts, an upper bound of the kernel
launches the compiled run makes; the compiled regions are the same on both sides). With --time compiled code
runs as configured, and COSMOS_COMPILE_BLOCKS=1 compiles the DiT blocks on both sides (CUDA).

- trainer: `torchrun -m scripts.train` with the experiment, the two callbacks train.sh registers (TrainMetricsCallback,
  StepTimingCallback) and `OpProbe` (this file) as a further callback. The probe wraps every callback's hooks, so each
  op is billed to the phase of the trainer's loop it ran in and, while a callback runs, to that callback:
    data      on_before_dataloading -> on_after_dataloading (the loader's next())
    h2d       -> on_before_forward: misc.to(device), on_training_step_start / _batch_start callbacks
    vae_cond  the pipe's get_data_and_condition (inside forward)
    forward   on_before_forward -> on_before_backward, without vae_cond
    backward  on_before_backward -> on_after_backward (loss scaling, backward, FSDP2 post-backward hooks)
    optimizer on_before_optimizer_step -> on_before_zero_grad (grad clip callback, grad_scaler.step, scheduler)
    ema_zero  on_before_zero_grad -> on_training_step_batch_end (EMA update, master->bf16 copy, zero_grad)
    step_end  on_training_step_batch_end -> next on_before_dataloading (step-end callbacks, checkpoint check)
- bare: bench_dit.py's `--net t2i --optimizer` step (net(x), MSE, backward, FusedAdam with fp32 masters,
  zero_grad(set_to_none)), phases forward / backward / optimizer.

Sync points counted: ops that read a device value on the host (aten._local_scalar_dense = .item()/float()/bool(),
is_nonzero, nonzero, equal, masked_select, unique, repeat_interleave without output_size), device->host copies
(on a device run), explicit synchronize calls (portable device layer, torch.cuda/npu.synchronize), and host reads
by Tensor.tolist/.cpu()/.numpy() of a tensor (on CPU these are no-ops, on a device they wait for it).
Each is listed with its source (callback name or innermost file:function of the tree, and the torch subsystem).
On CPU a host read of a tensor that lives on the CPU in a device run too (the loader's sampler indices at an epoch
boundary, loader.py:__iter__) is counted as well: read the sites, not only the totals.

TRAINER_OVERHEAD_KEEP_UNSHARDED=1 (trainer side): FSDP2 with reshard_after_forward=False (an experiment: what the
re-gather of every block in backward costs on one rank; it changes no value, it keeps ~4 GiB more on the 2B net).
TRAINER_OVERHEAD_ONE_UNIT=1 (trainer side, one rank): the DiT's per-block FSDP2 units left out, the pipeline's root
unit alone (an experiment: what the per-block hooks cost on one rank, BENCHMARKS 3h; gradients equal to fp32
rounding, ~7 GiB more on the 2B net). Both were product switches once (commit dfac936 for the second). Both set
COSMOS_FSDP_ONE_DEVICE=1: one process trains the plain module otherwise (portable/fsdp_policy.py); set it yourself
to probe the FSDP2 path of a multi-device run on one process.

Prints one JSON line per side (bench=trainer_overhead, side=trainer|bare) for the steady step (the second-last
of --iters), and a table. On CPU it takes 1-2 minutes.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import statistics
import os
import subprocess
import sys
import tempfile
import threading
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

HERE = os.path.dirname(os.path.abspath(__file__))
SMOKE_EXP = "predict2_text2image_training_2b_cosmos_nemo_assets_smoke"
FULL_EXP = "predict2_text2image_training_2b_cosmos_nemo_assets"
ENV_OUT = "TRAINER_OVERHEAD_OUT"
ENV_KEEP = "TRAINER_OVERHEAD_KEEP_UNSHARDED"
ENV_ONE_UNIT = "TRAINER_OVERHEAD_ONE_UNIT"
ENV_COUNT = "TRAINER_OVERHEAD_COUNT"  # 0: no dispatch mode (host times only)

SYNC_OPS = {
    "_local_scalar_dense", "item", "is_nonzero", "nonzero", "equal", "masked_select", "unique", "_unique",
    "_unique2", "unique_dim", "unique_consecutive",
}

# torch subsystems named in a source, innermost first wins
TORCH_AREAS = (
    ("torch/distributed/fsdp", "fsdp2"),
    ("torch/distributed/_composable/fsdp", "fsdp2"),
    ("torch/distributed/tensor", "dtensor"),
    ("torch/distributed/_tensor", "dtensor"),
    ("torch/distributed", "c10d"),
    ("torch/nn/utils/clip_grad", "clip_grad"),
    ("torch/amp/grad_scaler", "grad_scaler"),
    ("torch/optim", "torch.optim"),
    ("torch/utils/checkpoint", "checkpoint"),
    ("torch/autograd", "autograd"),
    ("torch/nn/modules", "nn"),
    ("torch/nn/functional", "nn"),
)
HOOK_PHASE = {
    "on_before_dataloading": "data",
    "on_after_dataloading": "h2d",
    "on_training_step_start": "h2d",
    "on_training_step_batch_start": "h2d",
    "on_before_forward": "forward",
    "on_after_forward": "forward",
    "on_before_backward": "backward",
    "on_after_backward": "backward",
    "on_before_optimizer_step": "optimizer",
    "on_before_zero_grad": "ema_zero",
    "on_training_step_batch_end": "step_end",
    "on_training_step_end": "step_end",
}
PHASES = ("data", "h2d", "vae_cond", "forward", "backward", "optimizer", "ema_zero", "step_end")


def _norm(path: str) -> str:
    return path.replace(os.sep, "/")


class Counter:
    """Per-step, per-phase counts of ops and sync points, each sync and op billed to a source."""

    def __init__(self, root: str):
        self.root = _norm(os.path.abspath(root)) + "/"
        self.steps: dict = {}
        self._step = None
        self._phase = "setup"
        self._t = time.perf_counter()
        self.source: str | None = None  # set while a callback hook runs
        self._tid = threading.get_ident()

    def _bill_time(self) -> None:
        now = time.perf_counter()
        rec = self._rec()
        if rec is not None and self._phase in rec["host_ms"]:
            rec["host_ms"][self._phase] += (now - self._t) * 1e3
        self._t = now

    @property
    def phase(self) -> str:
        return self._phase

    @phase.setter
    def phase(self, value: str) -> None:
        if value != self._phase:
            self._bill_time()
            self._phase = value

    @property
    def step(self):
        return self._step

    @step.setter
    def step(self, value) -> None:
        self._bill_time()
        self._step = value

    def _rec(self):
        if self.step is None:
            return None
        return self.steps.setdefault(self.step, {
            "phases": {p: collections.Counter() for p in PHASES},
            "sources": {p: collections.Counter() for p in PHASES},
            "syncs": collections.Counter(),
            "host_ms": dict.fromkeys(PHASES, 0.0),
        })

    def where(self) -> str:
        area = site = None
        f = sys._getframe(2)
        while f is not None and (area is None or site is None):
            fn = _norm(f.f_code.co_filename)
            if area is None and "/torch/" in fn:
                for key, name in TORCH_AREAS:
                    if key in fn:
                        area = name
                        break
            if site is None and fn.startswith(self.root) and not fn.endswith("trainer_overhead.py"):
                site = f"{fn[len(self.root):]}:{f.f_code.co_name}"
            f = f.f_back
        src = self.source or site or "?"
        return f"{src} [{area}]" if area else src

    def op(self, name: str, sync: bool, dtensor: bool, kind: str = "op") -> None:
        rec = self._rec()
        if rec is None:
            return
        phase = self.phase if self.phase in rec["phases"] else "step_end"
        c = rec["phases"][phase]
        if kind == "op":
            c["ops"] += 1
            if dtensor:
                c["dtensor_ops"] += 1
            if threading.get_ident() != self._tid:
                c["other_thread_ops"] += 1
            rec["sources"][phase][self.where()] += 1
        if sync:
            c["syncs"] += 1
            rec["syncs"][(phase, name, self.where())] += 1

    def summary(self, step) -> dict:
        rec = self.steps[step]
        phases = {p: dict(rec["phases"][p]) for p in PHASES if rec["phases"][p]}
        total = collections.Counter()
        for c in rec["phases"].values():
            total.update(c)
        host = {p: round(v, 3) for p, v in rec["host_ms"].items() if v}
        return {
            "iteration": step,
            "total": dict(total),
            "host_ms": host,
            "host_ms_total": round(sum(host.values()), 3),
            "phases": phases,
            "sync_sites": [dict(phase=p, what=w, source=s, n=n) for (p, w, s), n in
                           sorted(rec["syncs"].items(), key=lambda kv: (PHASES.index(kv[0][0]) if kv[0][0] in PHASES else 99, -kv[1]))],
            "top_sources": {p: [[s, n] for s, n in rec["sources"][p].most_common(12)] for p in PHASES if rec["sources"][p]},
        }


def _is_dtensor(x) -> bool:
    return type(x).__name__ == "DTensor"


def _device_of(x):
    return x.device.type if isinstance(x, torch.Tensor) else None


class CountingMode(TorchDispatchMode):
    def __init__(self, counter: Counter):
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        flat = list(args) + list(kwargs.values())
        dt = any(_is_dtensor(a) for a in flat) or any(
            isinstance(a, (list, tuple)) and any(_is_dtensor(b) for b in a) for a in flat)
        sync = name in SYNC_OPS or (name == "repeat_interleave" and kwargs.get("output_size") is None
                                    and len(args) > 1 and isinstance(args[1], torch.Tensor))
        out = func(*args, **kwargs)
        if not sync and name in ("_to_copy", "copy_"):  # device -> host copies wait for the device
            src = args[1] if name == "copy_" else args[0]
            dst = args[0] if name == "copy_" else out
            sync = _device_of(src) not in (None, "cpu", "meta") and _device_of(dst) == "cpu"
            name = f"{name} d2h" if sync else name
        self.counter.op(name, sync, dt)
        return out


_HOST_READS = ("tolist", "cpu", "numpy")


def install_host_hooks(counter: Counter) -> None:
    """Count explicit synchronize calls and host reads (tolist/cpu/numpy) as sync points."""
    def wrap(owner, attr, label, tensor_method=False):
        orig = getattr(owner, attr, None)
        if orig is None or getattr(orig, "_overhead_wrapped", False):
            return

        def wrapper(*a, **k):
            if not tensor_method or (a and isinstance(a[0], torch.Tensor) and not _is_dtensor(a[0])):
                counter.op(label, True, False, kind="sync")
            return orig(*a, **k)

        wrapper._overhead_wrapped = True
        setattr(owner, attr, wrapper)

    try:
        from cosmos_predict2.portable import device as pdev

        wrap(pdev, "synchronize", "device.synchronize")
    except ImportError:
        pass
    wrap(torch.cuda, "synchronize", "torch.cuda.synchronize")
    for attr in _HOST_READS:
        wrap(torch.Tensor, attr, f"Tensor.{attr}", tensor_method=True)


# ---------------------------------------------------------------- trainer side: a callback ------------------------
def keep_unsharded_after_forward() -> None:
    """Experiment (TRAINER_OVERHEAD_KEEP_UNSHARDED=1): FSDP2 with reshard_after_forward=False everywhere, so backward
    does not all-gather every block again (one rank: copies, not communication). Costs the unsharded bf16
    parameters kept from forward to backward (2B: ~4 GiB). Changes no value; measures what the re-gather costs."""
    import cosmos_predict2.models.text2image_dit as dit_mod
    import cosmos_predict2.pipelines.text2image as pipe_mod

    def wrap(fn):
        def keep(*a, **k):
            k["reshard_after_forward"] = False
            return fn(*a, **k)
        return keep

    for mod in (dit_mod, pipe_mod):
        mod.fully_shard = wrap(mod.fully_shard)


def one_unit_on_one_rank() -> None:
    """Experiment (TRAINER_OVERHEAD_ONE_UNIT=1): on a mesh of one device the DiT's own fully_shard (one unit per
    block, final layer, embedders) does nothing, so the pipeline's root fully_shard makes the whole net one unit."""
    import cosmos_predict2.models.text2image_dit as dit_mod

    per_module = dit_mod.MiniTrainDIT.fully_shard

    def fully_shard(self, mesh):
        if mesh.size() != 1:
            return per_module(self, mesh)
        print("trainer_overhead: FSDP2 one unit for the whole DiT (TRAINER_OVERHEAD_ONE_UNIT=1)", flush=True)

    dit_mod.MiniTrainDIT.fully_shard = fully_shard



try:
    from imaginaire.utils.callback import Callback as _Callback
except ImportError:  # the launcher side runs outside the tree's import path
    _Callback = object


class OpProbe(_Callback):
    """Registered as a trainer callback; writes the per-step counts to $TRAINER_OVERHEAD_OUT at the end."""

    def __init__(self, root: str | None = None):
        super().__init__()
        self.counter = Counter(root or os.getcwd())
        self.mode = None
        install_host_hooks(self.counter)
        if os.environ.get(ENV_KEEP) == "1":
            keep_unsharded_after_forward()
        if os.environ.get(ENV_ONE_UNIT) == "1":
            one_unit_on_one_rank()

    def _wrap_callbacks(self) -> None:
        group = self.trainer.callbacks
        for cb in group._callbacks:
            label = type(cb).__name__
            for hook in HOOK_PHASE:
                orig = getattr(cb, hook, None)
                if orig is None:
                    continue
                setattr(cb, hook, self._wrapped(orig, hook, label))

    def _wrapped(self, orig, hook, label):
        counter, phase = self.counter, HOOK_PHASE[hook]

        def run(*args, **kwargs):
            if hook == "on_before_dataloading":
                counter.step = kwargs.get("iteration", args[0] if args else None)
            counter.phase = phase
            prev, counter.source = counter.source, f"callback {label}.{hook}"
            try:
                return orig(*args, **kwargs)
            finally:
                counter.source = prev
        return run

    def on_train_start(self, model, iteration: int = 0) -> None:
        self._wrap_callbacks()
        pipe = getattr(model, "pipe", None)
        fn = getattr(pipe, "get_data_and_condition", None)
        if fn is not None:
            counter = self.counter

            def timed(*a, **k):
                prev, counter.phase = counter.phase, "vae_cond"
                try:
                    return fn(*a, **k)
                finally:
                    counter.phase = prev
            pipe.get_data_and_condition = timed
        if os.environ.get(ENV_COUNT, "1") != "0":
            self.mode = CountingMode(self.counter)
            self.mode.__enter__()

    def on_train_end(self, model, iteration: int = 0) -> None:
        if self.mode is not None:
            self.mode.__exit__(None, None, None)
            self.mode = None
        out = os.environ.get(ENV_OUT)
        if out:
            steps = sorted(s for s in self.counter.steps if s is not None)
            with open(out, "w") as f:
                json.dump({str(s): self.counter.summary(s) for s in steps}, f)


def _steady(steps: dict, side: str, args, **info) -> dict:
    keys = sorted(steps, key=int)
    steady = keys[-2] if len(keys) >= 2 else keys[-1]
    mid = keys[1:-1] or keys
    host = {p: round(statistics.median(steps[k]["host_ms"].get(p, 0.0) for k in mid), 3) for p in PHASES}
    row = dict(bench="trainer_overhead", side=side, count=args.count, iters=args.iters, blocks=args.blocks,
               full=args.full, **info)
    if args.count:
        row.update(steady=steps[steady], per_step_totals={k: steps[k]["total"] for k in keys},
                   per_step_syncs={k: steps[k]["sync_sites"] for k in keys})
    row.update(host_ms_median={p: v for p, v in host.items() if v},
               host_ms_total_median=round(statistics.median(steps[k]["host_ms_total"] for k in mid), 3))
    return row


def run_trainer(args, extra: list[str]) -> dict:
    exp = args.exp or (FULL_EXP if args.full else SMOKE_EXP)
    with tempfile.TemporaryDirectory(prefix="trainer_overhead-") as tmp:
        out = os.path.join(tmp, "counts.json")
        env = dict(os.environ)
        if args.count:
            env["COSMOS_DISABLE_COMPILE"] = "1"
        env.update({ENV_OUT: out, ENV_COUNT: "1" if args.count else "0", "IMAGINAIRE_OUTPUT_ROOT": os.path.join(tmp, "run"),
                    "COSMOS_TRAIN_METRICS": os.path.join(tmp, "metrics.jsonl"),
                    "PYTHONPATH": os.pathsep.join([os.getcwd(), HERE, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)})
        if "1" in (env.get(ENV_KEEP), env.get(ENV_ONE_UNIT)):
            env["COSMOS_FSDP_ONE_DEVICE"] = "1"  # both are FSDP2 experiments: one process is plain otherwise
        overrides = [f"trainer.max_iter={args.iters}", "checkpoint.save_iter=100000"]
        if args.blocks:
            overrides.append(f"model.config.pipe_config.net.num_blocks={args.blocks}")
        if args.full:
            overrides += ['model.config.model_manager_config.dit_path=""',
                          "model.config.pipe_config.tokenizer.vae_pth=checkpoints/smoke/tokenizer.pth",
                          "dataloader_train.num_workers=2"]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "--nnodes=1",
               "--master_addr=127.0.0.1", f"--master_port={args.port}", "-m", "scripts.train",
               "--config=cosmos_predict2/configs/base/config.py", "--", f"experiment={exp}",
               "++trainer.callbacks.train_metrics={_target_:cosmos_predict2.portable.metrics.TrainMetricsCallback}",
               "++trainer.callbacks.step_timing={_target_:cosmos_predict2.portable.step_timing.StepTimingCallback}",
               "++trainer.callbacks.gc_policy={_target_:cosmos_predict2.portable.gc_policy.GarbageCollectionCallback}",
               "++trainer.callbacks.op_probe={_target_:trainer_overhead.OpProbe}", *overrides, *extra]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not os.path.exists(out):
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
            print(tail, file=sys.stderr)
            raise SystemExit(f"error: the trainer run failed (rc {proc.returncode}, trainer_overhead.py). "
                             "See the log tail above.")
        steps = json.load(open(out))
        mpath = os.path.join(tmp, "metrics.jsonl")
        rows = [json.loads(line) for line in open(mpath)] if os.path.exists(mpath) else []
    return _steady(steps, "trainer", args, exp=exp, overrides=extra, losses=[r.get("loss") for r in rows],
                   timed_steps=[r["iteration"] for r in rows if r.get("phases_s_per_rank")], dtype=_dtype_name())


def _dtype_name() -> str:
    """The compute dtype both sides run in: the policy's under this process's environment, which the trainer inherits."""
    sys.path.insert(0, os.getcwd())
    from cosmos_predict2.portable.precision import compute_dtype

    return str(compute_dtype()).removeprefix("torch.")


# ---------------------------------------------------------------- bare side: bench_dit's step ----------------------
def run_bare(args) -> dict:
    sys.path.insert(0, os.getcwd())
    sys.path.insert(0, HERE)
    import bench_dit
    from cosmos_predict2.portable import device as pdev
    from cosmos_predict2.portable.optim import FusedAdam

    dev = pdev.get_device()
    tiny = not args.full
    # COSMOS_COMPILE_BLOCKS=1 (with --time): the bare side compiles its blocks as the trainer side does
    from cosmos_predict2.portable import block_compile

    bench_dit.set_variant("ours_cb" if block_compile.requested() and not args.count else "ours")
    if args.count:
        os.environ["COSMOS_DISABLE_COMPILE"] = "1"  # set_variant turns it on for the non-anchor variants
    dtype_name = _dtype_name()  # the trainer side's too: the same policy under the same environment
    dtype = getattr(torch, dtype_name)
    net, _ = bench_dit.build_net(dev, tiny, args.bare_sac, "t2i", args.blocks, dtype=dtype)
    x, kw, target, _S = bench_dit.inputs(dev, "t2i", tiny, "t2i", dtype=dtype)
    opt = FusedAdam([p for p in net.parameters() if p.requires_grad], lr=2**-15, weight_decay=0.1,
                    betas=(0.9, 0.99), eps=1e-8, master_weights=True, capturable=True)
    counter = Counter(os.getcwd())
    install_host_hooks(counter)

    def step():
        counter.phase = "optimizer"
        net.zero_grad(set_to_none=True)
        counter.phase = "forward"
        out = net(x, **kw)
        loss = (out.float() - target.float()).pow(2).mean()
        counter.phase = "backward"
        loss.backward()
        counter.phase = "optimizer"
        opt.step()
        return loss.detach()

    from cosmos_predict2.portable.gc_policy import Schedule, every_from

    collector = Schedule(every_from(None))  # train.sh's garbage-collection policy (COSMOS_GC_EVERY), as the trainer's
    collector.start()
    with CountingMode(counter) if args.count else contextlib.nullcontext():
        for i in range(args.iters):
            counter.step = i
            step()
            counter.phase = "step_end"
            collector.after_step(i + 1)
            pdev.synchronize()  # bench_dit's step boundary (one per timed step there too)
        counter.step = None
    collector.stop()
    steps = {str(s): counter.summary(s) for s in sorted(counter.steps)}
    del net, opt, x, kw, target
    pdev.empty_cache()  # the trainer run that follows is another process on the same device
    return _steady(steps, "bare", args, sac_mode=args.bare_sac or "mm_only (the experiment's)", dtype=dtype_name)


def table(rows: list[dict]) -> None:
    print("# ---- steady step: ops / dtensor ops / syncs per phase (count mode); host ms per phase (median) ----")
    for r in rows:
        host = r["host_ms_median"]
        print(f"# {r['side']:<8} host {r['host_ms_total_median']:9.2f} ms  " + " ".join(f"{p} {v:.2f}" for p, v in host.items()))
        st = r.get("steady")
        if not st:
            continue
        print(f"# {r['side']:<8} total ops {st['total'].get('ops', 0):6d}  dtensor {st['total'].get('dtensor_ops', 0):5d}"
              f"  syncs {st['total'].get('syncs', 0):4d}")
        for p, c in st["phases"].items():
            print(f"#   {p:<10} ops {c.get('ops', 0):6d}  dtensor {c.get('dtensor_ops', 0):5d}  syncs {c.get('syncs', 0):4d}")
        for s in st["sync_sites"]:
            print(f"#     sync {s['n']:3d} x {s['what']:<24} {s['phase']:<10} {s['source']}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", choices=("both", "trainer", "bare"), default="both")
    ap.add_argument("--full", action="store_true", help="the real 2B experiment and net (a GPU); default tiny on CPU")
    ap.add_argument("--exp", default=None, help=f"trainer experiment (default {SMOKE_EXP}; --full: {FULL_EXP})")
    ap.add_argument("--iters", type=int, default=4, help="steps per side; the second-last is reported")
    ap.add_argument("--port", type=int, default=29517)
    ap.add_argument("--blocks", type=int, default=None,
                    help="DiT blocks on both sides (tiny default 2; 28 = the 2B net's structure with tiny widths)")
    ap.add_argument("--time", dest="count", action="store_false",
                    help="host time per phase only, no dispatch mode (torch.compile as configured)")
    ap.add_argument("--bare-sac", default=None,
                    help="bare side: the net's activation-checkpointing mode instead of the experiment's (mm_only), "
                         "e.g. none (trainer side: -- model.config.pipe_config.net.sac_config.mode=none)")
    ap.add_argument("overrides", nargs="*", help="after --: extra key=value overrides for the trainer run")
    args = ap.parse_args(argv)
    sys.path.insert(0, HERE)
    import bench_dit

    if not bench_dit.require_tree("trainer_overhead.py"):
        return 2
    if args.count and not args.full:
        os.environ.setdefault("COSMOS_CPU_DTYPE", "bf16")  # counts of the bf16 path; the trainer run inherits it
    rows = []
    if args.side in ("both", "bare"):
        rows.append(run_bare(args))
        print(json.dumps(rows[-1]), flush=True)
    if args.side in ("both", "trainer"):
        rows.append(run_trainer(args, args.overrides))
        print(json.dumps(rows[-1]), flush=True)
    table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
