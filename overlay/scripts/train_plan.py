"""The plan train.sh runs (scripts/train_preflight.py's third part): the flags, fresh or resumed run, the torchrun
command, the environment and the header, written as bash assignments for train.sh to source.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import difflib
import ipaddress
import os
import re
import shlex
import sys
from dataclasses import dataclass

from train_checks import (OneLineParser, _fail, _int, _ov_int, check_checkpointing_mode, check_checkpoints, check_data,
                          check_job, check_output_root, check_parallel, check_switches, detect_device, dtype_note,
                          free_port, memory_check, defaults_env, npu_env, parse_overrides, port_in_use, usable_cpus)
from train_experiments import (CONFIG_FILE, CUDA_ENV_DEFAULTS, ENV_RESUME, EXPERIMENTS, K_DATASET, K_JOB, K_MAX_ITER,
                               GC_CALLBACK, K_SAMPLER_DATASET, METRICS_CALLBACK, NPU_ENV_DEFAULTS, STEP_TIMING_CALLBACK)
def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(  # usage errors: one line, exit 2, as every other preflight failure
        prog="train.sh",
        error_where="train.sh arguments",
        error_todo="Run `bash train.sh --help` for the flags",
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Validate, set up the device environment and run torchrun -m scripts.train for one experiment.",
        epilog="Config overrides go after `--`, e.g. `bash train.sh --EXP=... -- trainer.max_iter=100`.\n"
        "Each run writes $IMAGINAIRE_OUTPUT_ROOT (default <tree>/outputs)/<project>/<group>/<name>/logs/\n"
        "train-<UTC time>-<pid>.log (console copy), .metrics.jsonl (per iteration), .report.json (summary)\n"
        "and .report.png (loss and step-time curves); checkpoints go to <name>/checkpoints/.\n"
        "On NPU it sets " + ", ".join(NPU_ENV_DEFAULTS) + " and HCCL_IF_IP, on CUDA "
        + ", ".join(f"{k}={v}" for k, v in CUDA_ENV_DEFAULTS.items()) + ", each only if unset.\n"
        "Experiments:\n  " + "\n  ".join(EXPERIMENTS),
    )
    p.add_argument("--EXP", help="experiment name (see below)")
    p.add_argument("--nproc_per_node", default="1", help="processes (devices) per node, >= 1 (default 1)")
    p.add_argument("--nnodes", default="1", help="number of nodes, >= 1 (default 1)")
    p.add_argument("--node_rank", default="0", help="this node's rank, 0 <= node_rank < nnodes (default 0)")
    p.add_argument("--master_addr", default=None, help="rendezvous host (default 127.0.0.1; required if nnodes > 1)")
    p.add_argument("--master_port", default=None,
                   help="rendezvous port 1..65535, or auto: a free port found on this host (default auto on one "
                   "node, 29500 on several); a given port is checked to be free on node 0")
    p.add_argument("--hccl_if_ip", default=None, help="IPv4 address for HCCL_IF_IP (NPU only)")
    p.add_argument("--tree", default=None, help="patched cosmos-predict2 tree (default: train.sh's directory)")
    p.add_argument("--fresh", action="store_true",
                   help="start a new run: never resume; a run directory that holds checkpoints is left as it is "
                   "and the run goes to <name>-2 (-3, ...) beside it")
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="CHECKPOINT",
                   help="resume the run's latest checkpoint (an error if there is none), or =CHECKPOINT: a run "
                   "directory, its checkpoints/ or a checkpoint file .../checkpoints/model/iter_N.pt. Without "
                   "--fresh or --resume a run resumes when its directory has a checkpoint; the first line says which")
    p.add_argument("--dataset", default=None, metavar="DIR",
                   help=f"training dataset directory (sets {K_DATASET} and {K_SAMPLER_DATASET})")
    p.add_argument("--cpu_dtype", choices=("auto", "fp32", "bf16"), default=None,
                   help="CPU compute dtype of the _smoke experiments: auto (default: bf16 only where the CPU runs it "
                   "natively, else fp32), fp32 or bf16; exported as COSMOS_CPU_DTYPE")
    p.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                   help="validate, print the command and the environment it would set, exit")
    p.add_argument("--profile_steps", default="0", help="write a torch profiler trace of N steps after 2 warm-up "
                   "steps to <log stem>.trace-rank<r>.json (default 0: no trace)")
    p.add_argument("--device_memory_gib", default=None, help="memory of one device in GiB for the peak-memory "
                   "estimate (default: $COSMOS_DEVICE_MEMORY_GIB; without either the estimate is only printed)")
    p.add_argument("--skip_memory_check", action="store_true",
                   help="start even when the estimated peak memory per device exceeds 97%% of the device")
    p.add_argument("--plan-file", dest="plan_file", default=None, help=argparse.SUPPRESS)
    return p


_ITER_FILE = re.compile(r"iter_(\d+)\.pt")
_CKPT_KINDS = ("model", "optim", "scheduler", "trainer")


def latest_checkpoint(run_dir: str) -> str | None:
    """The file name upstream's Checkpointer resumes from (checkpoints/latest_checkpoint.txt), if any."""
    try:
        with open(os.path.join(run_dir, "checkpoints", "latest_checkpoint.txt")) as f:
            name = f.read().strip()
    except OSError:
        return None
    return name or None


def _iteration(ckpt_file: str) -> int | None:
    m = _ITER_FILE.fullmatch(ckpt_file)
    return int(m.group(1)) if m else None


def _resume_target(raw: str) -> tuple[str, str | None]:
    """--resume=PATH -> (run directory, checkpoint file name or None for the latest)."""
    path = os.path.abspath(os.path.expanduser(raw))
    where = f"--resume={raw}"
    if os.path.isfile(path):
        kind_dir = os.path.dirname(path)
        if not (_ITER_FILE.fullmatch(os.path.basename(path)) and os.path.basename(kind_dir) in _CKPT_KINDS
                and os.path.basename(os.path.dirname(kind_dir)) == "checkpoints"):
            raise _fail(f"{path} is not a training checkpoint (<run>/checkpoints/model/iter_N.pt)", where,
                        "Pass a run directory or one of its checkpoints/model/iter_N.pt files")
        return os.path.dirname(os.path.dirname(kind_dir)), os.path.basename(path)
    if os.path.isdir(path):
        return (os.path.dirname(path) if os.path.basename(path) == "checkpoints" else path), None
    raise _fail(f"{path} does not exist", where, "Pass a run directory or one of its checkpoints/model/iter_N.pt files")


def plan_run(a: argparse.Namespace, job_dir: str, ov: dict[str, str], max_iter: int
             ) -> tuple[str, str, str | None, int | None, str]:
    """Fresh or resumed: (run directory, run line for the log's first line, checkpoint file to resume from or None
    for upstream's latest, iteration resumed at or None, job name override or "")."""
    if a.fresh and a.resume is not None:
        raise _fail("--fresh and --resume both given", "train.sh arguments", "Pass one of them")
    name_override = ""
    if a.fresh:
        run_dir = job_dir
        if latest_checkpoint(job_dir) is not None:  # the old run stays untouched; the new one goes beside it
            n = 2
            while os.path.exists(f"{job_dir}-{n}"):
                n += 1
            run_dir, name_override = f"{job_dir}-{n}", f"{os.path.basename(job_dir)}-{n}"
        why = f"; {job_dir} holds an earlier run, left as it is" if name_override else ""
        return run_dir, f"run: new run in {run_dir} (--fresh{why})", None, None, name_override
    pick = None
    run_dir = job_dir
    if a.resume:
        run_dir, pick = _resume_target(a.resume)
    latest = latest_checkpoint(run_dir)
    if latest is None:
        if a.resume is not None:
            raise _fail(f"nothing to resume: {run_dir} has no checkpoints/latest_checkpoint.txt", "--resume",
                        "Drop --resume to start a new run, or pass --resume=<run directory or checkpoint file>")
        return run_dir, f"run: new run in {run_dir} (no checkpoint there)", None, None, ""
    ckpt = pick or latest
    it = _iteration(ckpt)
    for kind in _CKPT_KINDS:
        f = os.path.join(run_dir, "checkpoints", kind, ckpt)
        if not os.path.isfile(f):
            raise _fail(f"checkpoint {f} is missing", "--resume" if a.resume is not None else run_dir,
                        "Pass --resume=<another checkpoints/model/iter_N.pt>, or --fresh to start a new run")
    if it is not None and it >= max_iter:
        raise _fail(f"the run already reached iteration {it} and {K_MAX_ITER} is {max_iter}, so it would train "
                    "nothing", os.path.join(run_dir, "checkpoints", "model", ckpt),
                    f"Pass --fresh for a new run, or raise {K_MAX_ITER} after -- to continue this one")
    how = "--resume" if a.resume is not None else "a checkpoint is there; --fresh starts a new run instead"
    older = f", not the latest {latest}: later checkpoints get overwritten" if pick and pick != latest else ""
    line = (f"run: resuming {run_dir} from iteration {it} ({os.path.join('checkpoints', 'model', ckpt)}{older}; "
            f"{how})")
    return run_dir, line, (ckpt if pick and pick != latest else None), it, ""


def _set_override(overrides: list[str], key: str, value: str) -> list[str]:
    """overrides with every `key=`/`+key=`/`++key=` replaced by one key=value at the end."""
    return [t for t in overrides if t.split("=", 1)[0].lstrip("+") != key] + [f"{key}={value}"]


@dataclass
class Plan:
    cmd: list[str]
    env: dict[str, str]  # to export (user-set variables are never in here)
    log: str
    metrics: str
    report: str
    tree: str
    device: str
    notes: list[str]
    dry_run: bool
    plan_file: str | None
    node_rank: int
    run: str = ""  # the log's first line: new run or resumed, and where
    resume_iteration: int | None = None


def build_plan(argv: list[str], environ: dict[str, str] | None = None) -> Plan:
    environ = dict(os.environ if environ is None else environ)
    if "--" in argv:
        i = argv.index("--")
        flags, overrides = argv[:i], argv[i + 1:]
    else:
        flags, overrides = argv, []
    a = _parser().parse_args(flags)
    if not a.EXP:
        raise _fail("no experiment given", "--EXP", "Pass --EXP=<name>; one of " + ", ".join(EXPERIMENTS))
    if a.EXP not in EXPERIMENTS:
        close = difflib.get_close_matches(a.EXP, list(EXPERIMENTS), n=1)
        hint = f"Did you mean {close[0]}? " if close else ""
        raise _fail(f"unknown experiment {a.EXP!r}", "--EXP", f"{hint}Use one of " + ", ".join(EXPERIMENTS))
    exp = EXPERIMENTS[a.EXP]
    nproc = _int("nproc_per_node", a.nproc_per_node, 1)
    profile_steps = _int("profile_steps", a.profile_steps, 0)
    gc_every = environ.get("COSMOS_GC_EVERY")
    if gc_every is not None and not re.fullmatch(r"\s*\d+\s*", gc_every):
        raise _fail(f"COSMOS_GC_EVERY={gc_every!r} is not a step count", "environment",
                    "Set COSMOS_GC_EVERY=N (a full garbage collection every N steps) or 0 (Python's automatic one)")
    nnodes = _int("nnodes", a.nnodes, 1)
    node_rank = _int("node_rank", a.node_rank, 0, nnodes - 1)
    raw_port = a.master_port if a.master_port is not None else ("auto" if nnodes == 1 else "29500")
    if raw_port.strip().lower() == "auto":
        if nnodes > 1:  # every node must name the same port; only node 0 could look for a free one
            raise _fail("--master_port=auto needs a single node", "--master_port",
                        "Pass the same --master_port=N on every node")
        port = None
    else:
        port = _int("master_port", raw_port, 1, 65535)
    if a.master_addr is None or not a.master_addr.strip():
        if nnodes > 1:
            raise _fail(f"--nnodes={nnodes} needs the rendezvous host", "--master_addr",
                        "Pass --master_addr=<IP of node 0> on every node")
        master_addr = "127.0.0.1"
    else:
        master_addr = a.master_addr.strip()
        if not re.fullmatch(r"[A-Za-z0-9.\-:\[\]_]+", master_addr):
            raise _fail(f"--master_addr={master_addr!r} is not a host name or IP", "--master_addr",
                        "Pass the IP or host name of node 0")
    if a.hccl_if_ip is not None:
        try:
            ipaddress.IPv4Address(a.hccl_if_ip.strip())
        except ValueError:
            raise _fail(f"--hccl_if_ip={a.hccl_if_ip!r} is not an IPv4 address", "--hccl_if_ip",
                        "Pass this host's IPv4 address, e.g. 192.168.1.10") from None
    tree = os.path.abspath(a.tree or os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if not os.path.isfile(os.path.join(tree, CONFIG_FILE)):
        raise _fail(f"{tree} is not a cosmos-predict2 tree (no {CONFIG_FILE})", "--tree",
                    "Pass --tree=<patched tree> or run the train.sh installed in it")
    if a.dataset is not None:  # one flag for the two copies of the dataset in the config (loader and sampler)
        if not a.dataset.strip():
            raise _fail("--dataset is empty", "--dataset", "Pass --dataset=<dataset directory>")
        data_dir = os.path.abspath(os.path.expanduser(a.dataset.strip()))  # relative to where train.sh was called
        for key in (K_DATASET, K_SAMPLER_DATASET):
            given = parse_overrides(overrides).get(key)
            if given is not None and given.strip().strip("'\"") != a.dataset.strip():
                raise _fail(f"--dataset={a.dataset} and {key}={given} both given", "train.sh arguments",
                            "Pass only --dataset")
            overrides = _set_override(overrides, key, data_dir)
    ov = parse_overrides(overrides)
    world = nproc * nnodes
    cp = check_parallel(a.EXP, exp, world, ov)
    check_checkpointing_mode(a.EXP, ov)
    check_data(a.EXP, exp, tree, ov)
    check_checkpoints(a.EXP, exp, tree, ov)

    kind, count, note = detect_device(tree, a.dry_run)
    # the device layer's parser, before torchrun starts
    check_switches(tree, ("COSMOS_COMPILE_BLOCKS", "COSMOS_FUSED_ADAM", "COSMOS_FSDP_ONE_DEVICE",
                          "COSMOS_EMA_OVERLAP", "COSMOS_METRICS_SYNC"), environ)
    notes = [f"device {kind}" + (f" ({note})" if note else "")]
    if count is None and kind == "cpu":  # one process per core at most: more only time-slice the same cores
        count, kind_name = usable_cpus(), "CPU cores usable by this process"
    else:
        kind_name = f"{kind} device(s)"
    if count is not None and nproc > count:
        raise _fail(f"--nproc_per_node={nproc} but this node has {count} {kind_name}", "--nproc_per_node",
                    f"Pass --nproc_per_node <= {count}")
    env: dict[str, str] = {}
    if kind == "npu":
        env, kept = npu_env(environ, a.hccl_if_ip.strip() if a.hccl_if_ip else None)
        notes += kept
    elif kind == "cuda":
        env, kept = defaults_env(CUDA_ENV_DEFAULTS, environ)
        notes += kept
    if kind != "npu" and a.hccl_if_ip:
        notes.append(f"--hccl_if_ip ignored: device is {kind}, not npu")
    if a.cpu_dtype is not None:
        env["COSMOS_CPU_DTYPE"] = a.cpu_dtype
    notes.append(dtype_note(tree, kind, exp, env.get("COSMOS_CPU_DTYPE", environ.get("COSMOS_CPU_DTYPE")), ov))
    if kind in ("cuda", "npu") and not exp.smoke:  # peak memory per device from the config, before torchrun
        notes.append(memory_check(a, exp, kind, world, cp, ov, environ, tree))
    out_root = environ.get("IMAGINAIRE_OUTPUT_ROOT")
    if out_root is None:
        out_root = env["IMAGINAIRE_OUTPUT_ROOT"] = "outputs"  # relative to the tree (training runs there)
    project, group, name = check_job(ov, exp)
    abs_root = out_root if os.path.isabs(out_root) else os.path.join(tree, out_root)
    job_dir = os.path.join(abs_root, project, group, name)
    max_iter = _ov_int(ov, K_MAX_ITER, exp.max_iter)
    run_dir, run_line, resume_file, resume_iter, fresh_name = plan_run(a, job_dir, ov, max_iter)
    if fresh_name:
        overrides = _set_override(overrides, "job.name", fresh_name)
    elif run_dir != job_dir:  # --resume=<another run>: train in that run's directory
        r_root, r_project, r_group, r_name = (os.path.dirname(os.path.dirname(os.path.dirname(run_dir))),
                                              *run_dir.rstrip("/").split("/")[-3:])
        for key, val in zip(K_JOB, (r_project, r_group, r_name)):
            overrides = _set_override(overrides, key, val)
        if os.path.abspath(r_root) != os.path.abspath(abs_root):
            env["IMAGINAIRE_OUTPUT_ROOT"] = abs_root = r_root
            notes.append(f"IMAGINAIRE_OUTPUT_ROOT={r_root} for this run (the root of --resume's run)")
    if resume_file:
        env[ENV_RESUME] = resume_file
    check_output_root(abs_root)
    if port is None:
        port = free_port()
        notes.append(f"port {port} (free on this host, picked by --master_port=auto)")
    elif node_rank == 0 and port_in_use(master_addr, port):
        raise _fail(f"port {port} is in use on this host", "--master_port",
                    "Pass --master_port=auto (single node) or another free port")
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + f"-{os.getpid()}"
    job_dir = run_dir
    stem = os.path.join(job_dir, "logs", f"train-{stamp}")
    env["COSMOS_TRAIN_METRICS"] = stem + ".metrics.jsonl"  # this run's file; the callback reads it on rank 0
    if profile_steps:
        env.update(COSMOS_PROFILE_STEPS=str(profile_steps), COSMOS_PROFILE_TRACE=stem + ".trace")
    if exp.task == "text2image" and "COSMOS_COMPILE_BLOCKS" not in environ:
        # Text2Image steps are launch-bound: compiled blocks (portable/block_compile.py, CUDA only) took the 2B step
        # from 0.68 to 0.18 s on an H200 (BENCHMARKS.md 3g). COSMOS_COMPILE_BLOCKS=0 keeps eager blocks.
        env["COSMOS_COMPILE_BLOCKS"] = "1"
        if kind == "cuda":
            notes.append("compiled DiT blocks (COSMOS_COMPILE_BLOCKS=1; 0 keeps them eager)")
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        f"--nproc_per_node={nproc}", f"--nnodes={nnodes}", f"--node_rank={node_rank}",
        f"--master_addr={master_addr}", f"--master_port={port}",
        "-m", "scripts.train", f"--config={CONFIG_FILE}", "--",
        f"experiment={a.EXP}",
        # ++ adds or replaces: registers the metrics callback whether or not the experiment already does
        f"++trainer.callbacks.train_metrics={{_target_:{METRICS_CALLBACK}}}",
        f"++trainer.callbacks.step_timing={{_target_:{STEP_TIMING_CALLBACK}}}",  # per-phase step times
        f"++trainer.callbacks.gc_policy={{_target_:{GC_CALLBACK}}}",  # Python's GC on a schedule (COSMOS_GC_EVERY)
        *overrides,
    ]
    notes.append(f"world size {world}, context parallel {cp}, data parallel {world // cp}")
    return Plan(cmd, env, stem + ".log", stem + ".metrics.jsonl", stem + ".report.json", tree, kind, notes,
                a.dry_run, a.plan_file, node_rank, run_line, resume_iter)


def write_plan(plan: Plan, path: str) -> None:
    q = shlex.quote
    lines = [f"export {k}={q(v)}" for k, v in plan.env.items()]
    lines += [
        "TRAIN_CMD=(" + " ".join(q(c) for c in plan.cmd) + ")",
        f"TRAIN_LOG={q(plan.log)}",
        f"TRAIN_METRICS={q(plan.metrics)}",
        f"TRAIN_REPORT={q(plan.report)}",
        f"TRAIN_TREE={q(plan.tree)}",
        f"TRAIN_PYTHON={q(sys.executable)}",
        f"TRAIN_DRY_RUN={1 if plan.dry_run else 0}",
        f"TRAIN_NODE_RANK={plan.node_rank}",
        f"TRAIN_RESUME_ITERATION={'' if plan.resume_iteration is None else plan.resume_iteration}",
        f"TRAIN_HEADER={q(describe(plan))}",
    ]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def describe(plan: Plan) -> str:
    env = "\n".join(f"  {k}={v}" for k, v in plan.env.items()) or "  (none)"
    notes = "\n".join(f"  {n}" for n in plan.notes)
    return (f"{plan.run}\ncd {shlex.quote(plan.tree)}\n{' '.join(shlex.quote(c) for c in plan.cmd)}\n"
            f"environment set by train.sh:\n{env}\nnotes:\n{notes}\nlog: {plan.log}\n")

