"""Validation and environment for train.sh: everything that must be right before torchrun starts.

    python scripts/train_preflight.py --plan-file=PLAN [train.sh flags] [-- key=value ...]

train.sh stays thin: it calls this, sources PLAN (bash assignments, every value shlex-quoted) and runs the
command it names. Every failure here is ONE line `error: <what> (<where>). <what to do>.` on stderr and exit 2,
so nothing is started, no output directory is created.

EXPERIMENTS is the single table of what the launcher needs to know about each experiment; tests/launcher checks
it against upstream's own config objects in an applied tree.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import difflib
import glob
import importlib.util
import ipaddress
import os
import re
import shlex
import sys
from dataclasses import dataclass

CONFIG_FILE = "cosmos_predict2/configs/base/config.py"
METRICS_CALLBACK = "cosmos_predict2.portable.metrics.TrainMetricsCallback"
STEP_TIMING_CALLBACK = "cosmos_predict2.portable.step_timing.StepTimingCallback"

# Wan2.1 VAE: 4x temporal compression with the first frame kept, so N frames -> (N - 1) / 4 + 1 latent frames.
VAE_TEMPORAL_COMPRESSION = 4

DOWNLOAD_VIDEO = "python -m installer download --dataset cosmos-nemo-assets"
T5_VIDEO = "python -m scripts.get_t5_embeddings_from_cosmos_nemo_assets --dataset_path datasets/cosmos_nemo_assets"
EXTRACT_IMAGES = (
    "python -m scripts.extract_images_from_videos --input_dataset_dir datasets/cosmos_nemo_assets "
    "--output_dataset_dir datasets/cosmos_nemo_assets_images --stride 30"
)
T5_IMAGES = (
    "python -m scripts.get_t5_embeddings_from_cosmos_nemo_assets --dataset_path datasets/cosmos_nemo_assets_images "
    "--is_image"
)
MAKE_SMOKE = "python -m scripts.make_smoke_dataset"


@dataclass(frozen=True)
class Experiment:
    task: str  # "video2world" | "text2image"
    size: str  # "2B" | "14B" (the seed model family; smoke nets are tiny but keep the family's code path)
    cp: int  # model_parallel.context_parallel_size
    num_heads: int  # model.config.pipe_config.net.num_heads
    num_frames: int | None  # dataloader_train.dataset.num_frames (video only)
    fsdp_shard_size: int  # model.config.fsdp_shard_size
    batch_size: int  # dataloader_train.batch_size (per data-parallel rank)
    dataset_dir: str
    dit_path: str  # "" = random init (smoke)
    vae_path: str
    job: tuple[str, str, str]  # project, group, name
    max_iter: int  # trainer.max_iter (a resumed run at or past it trains nothing)

    @property
    def smoke(self) -> bool:
        return self.dit_path == ""

    @property
    def model_id(self) -> str:
        return f"{self.size}-{'Video2World' if self.task == 'video2world' else 'Text2Image'}"


def _seed(task: str, size: str, cp: int) -> Experiment:
    video = task == "video2world"
    model_dir = f"checkpoints/nvidia/Cosmos-Predict2-{size}-{'Video2World' if video else 'Text2Image'}"
    shard = {("video2world", "2B"): 8, ("video2world", "14B"): 32, ("text2image", "2B"): 1, ("text2image", "14B"): 8}
    return Experiment(
        task=task,
        size=size,
        cp=cp,
        num_heads={"2B": 16, "14B": 40}[size],
        num_frames=93 if video else None,
        fsdp_shard_size=shard[(task, size)],
        batch_size=1,
        dataset_dir="datasets/cosmos_nemo_assets" if video else "datasets/cosmos_nemo_assets_images",
        dit_path=f"{model_dir}/{'model-720p-16fps.pt' if video else 'model.pt'}",
        vae_path=f"{model_dir}/tokenizer/tokenizer.pth",
        job=("posttraining", task, f"{size.lower()}_cosmos_nemo_assets"),
        max_iter=1000,
    )


def _smoke(seed: Experiment) -> Experiment:
    video = seed.task == "video2world"
    return Experiment(
        task=seed.task,
        size=seed.size,
        cp=1,
        num_heads=4,
        num_frames=13 if video else None,
        fsdp_shard_size=seed.fsdp_shard_size,
        batch_size=1,
        dataset_dir="datasets/smoke/cosmos_nemo_assets" if video else "datasets/smoke/cosmos_nemo_assets_images",
        dit_path="",
        vae_path="checkpoints/smoke/tokenizer.pth",
        job=(seed.job[0], f"{seed.task}_smoke", f"{seed.job[2]}_smoke"),
        max_iter=3,
    )


_SEEDS = {
    "predict2_text2image_training_2b_cosmos_nemo_assets": _seed("text2image", "2B", 1),
    "predict2_text2image_training_14b_cosmos_nemo_assets": _seed("text2image", "14B", 1),
    "predict2_video2world_training_2b_cosmos_nemo_assets": _seed("video2world", "2B", 2),
    "predict2_video2world_training_14b_cosmos_nemo_assets": _seed("video2world", "14B", 8),
}
EXPERIMENTS: dict[str, Experiment] = {**_SEEDS, **{f"{k}_smoke": _smoke(v) for k, v in _SEEDS.items()}}

# Override keys the checks below understand (anything else passes through to upstream's config system untouched).
K_CP = "model_parallel.context_parallel_size"
K_HEADS = "model.config.pipe_config.net.num_heads"
K_FRAMES = "dataloader_train.dataset.num_frames"
K_SHARD = "model.config.fsdp_shard_size"
K_BATCH = "dataloader_train.batch_size"
K_DATASET = "dataloader_train.dataset.dataset_dir"
K_SAMPLER_DATASET = "dataloader_train.sampler.dataset.dataset_dir"
K_DIT = "model.config.model_manager_config.dit_path"
K_VAE = "model.config.pipe_config.tokenizer.vae_pth"
K_JOB = ("job.project", "job.group", "job.name")
K_MAX_ITER = "trainer.max_iter"
# train.sh --resume=<checkpoint>: the checkpoint file name the patched Checkpointer.load takes instead of the latest
ENV_RESUME = "COSMOS_RESUME_CHECKPOINT"

NPU_ENV_DEFAULTS = {
    "TASK_QUEUE_ENABLE": "2",  # level-2 task queue: operator dispatch pipelined with the host
    "CPU_AFFINITY_CONF": "2",  # 2 = fine-grained core binding (CANN docs; 1 is coarse)
    "HCCL_WHITELIST_DISABLE": "1",
    "HCCL_CONNECT_TIMEOUT": "1200",  # model load on 8 ranks can exceed the 120 s default
    "HCCL_DETERMINISTIC": "false",
    "PYTORCH_NPU_ALLOC_CONF": "expandable_segments:True",
}


class PreflightError(Exception):
    """One user-facing line; main() prints it and exits 2."""


def _fail(what: str, where: str, todo: str) -> PreflightError:
    return PreflightError(f"error: {what} ({where}). {todo}.")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's default prints usage + message over several lines
        raise _fail(message, "train.sh arguments", "Run `bash train.sh --help` for the flags")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="train.sh",
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Validate, set up the device environment and run torchrun -m scripts.train for one experiment.",
        epilog="Config overrides go after `--`, e.g. `bash train.sh --EXP=... -- trainer.max_iter=100`.\n"
        "Each run writes $IMAGINAIRE_OUTPUT_ROOT (default <tree>/outputs)/<project>/<group>/<name>/logs/\n"
        "train-<UTC time>-<pid>.log (console copy), .metrics.jsonl (per iteration), .report.json (summary)\n"
        "and .report.png (loss and step-time curves); checkpoints go to <name>/checkpoints/.\n"
        "On NPU it sets " + ", ".join(NPU_ENV_DEFAULTS) + " and HCCL_IF_IP, each only if unset.\n"
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


def _int(name: str, raw: str, lo: int, hi: int | None = None) -> int:
    if raw is None or not re.fullmatch(r"\d+", raw.strip()):
        raise _fail(f"--{name}={raw} is not a non-negative integer", f"--{name}", f"Pass an integer >= {lo}")
    v = int(raw)
    if v < lo or (hi is not None and v > hi):
        rng = f"{lo} <= {name} <= {hi}" if hi is not None else f"{name} >= {lo}"
        raise _fail(f"--{name}={v} is out of range", f"--{name}", f"Pass a value with {rng}")
    return v


def parse_overrides(tokens: list[str]) -> dict[str, str]:
    """key -> value of the `key=value` overrides (hydra's +/++ prefixes stripped); rejects malformed ones early."""
    out: dict[str, str] = {}
    for tok in tokens:
        if tok.startswith("~"):  # hydra deletion, no value
            continue
        if "=" not in tok or tok.startswith("="):
            raise _fail(f"override {tok!r} is not key=value", "arguments after --", "Write overrides as key=value")
        key, val = tok.split("=", 1)
        key = key.lstrip("+")
        if key == "experiment":
            raise _fail("experiment= given as an override", "arguments after --", "Choose the experiment with --EXP=")
        out[key] = val
    return out


def _ov_int(ov: dict[str, str], key: str, default: int) -> int:
    if key not in ov:
        return default
    raw = ov[key].strip()
    if not re.fullmatch(r"\d+", raw) or int(raw) < 1:
        raise _fail(f"{key}={raw} is not a positive integer", "override after --", f"Pass {key}=N with N >= 1")
    return int(raw)


def _ov_str(ov: dict[str, str], key: str, default: str) -> str:
    return ov[key].strip().strip("'\"") if key in ov else default


def latent_frames(exp: Experiment, num_frames: int | None) -> int:
    """Latent T the DiT sees: (N-1)/4+1 for video; 1 for images (text2image never splits time)."""
    if exp.task != "video2world":
        return 1
    return (num_frames - 1) // VAE_TEMPORAL_COMPRESSION + 1


def check_parallel(exp_name: str, exp: Experiment, world: int, ov: dict[str, str]) -> int:
    cp = _ov_int(ov, K_CP, exp.cp)
    heads = _ov_int(ov, K_HEADS, exp.num_heads)
    frames = _ov_int(ov, K_FRAMES, exp.num_frames) if exp.num_frames is not None else None
    if frames is not None and (frames - 1) % VAE_TEMPORAL_COMPRESSION:
        raise _fail(f"num_frames={frames} is not 4k+1", f"{exp_name}, {K_FRAMES}",
                    "The Wan VAE compresses time by 4 after the first frame: use 4k+1 frames, e.g. 93")
    lat = latent_frames(exp, frames)
    ok = [d for d in range(1, world + 1) if world % d == 0 and heads % d == 0 and lat % d == 0]
    fix = f"override {K_CP}=N with N in {{{', '.join(map(str, ok))}}}"
    where = f"{exp_name}, context_parallel_size={cp}" + ("" if K_CP in ov else " from the experiment")
    if world % cp:
        raise _fail(f"world size {world} (nproc_per_node x nnodes) is not divisible by context parallel size {cp}",
                    where, f"Use a multiple of {cp} processes, or {fix}")
    if heads % cp:
        raise _fail(f"{heads} attention heads are not divisible by context parallel size {cp}", where,
                    fix[0].upper() + fix[1:])
    if lat % cp:
        what = (f"{lat} latent frames ({frames} frames -> (N-1)/4+1) are not divisible by context parallel size {cp}"
                if exp.task == "video2world" else
                f"text2image trains on single images (1 latent frame), so context parallel size {cp} cannot split it")
        raise _fail(what, where, fix[0].upper() + fix[1:])
    shard = _ov_int(ov, K_SHARD, exp.fsdp_shard_size)
    if world > shard and world % shard:
        # upstream builds a (world // shard, shard) device mesh from min(shard, world): it must tile the world
        raise _fail(f"world size {world} is not a multiple of the FSDP shard size {shard}", f"{exp_name}, {K_SHARD}",
                    f"Use a multiple of {shard} processes, or override {K_SHARD}=N with N dividing {world}")
    return cp


def _nonempty(pattern_dir: str, pattern: str) -> bool:
    return bool(glob.glob(os.path.join(pattern_dir, pattern)))


def check_data(exp_name: str, exp: Experiment, tree: str, ov: dict[str, str]) -> None:
    rel = _ov_str(ov, K_DATASET, exp.dataset_dir)
    if _ov_str(ov, K_SAMPLER_DATASET, exp.dataset_dir) != rel:
        # the config holds two copies of the dataset (loader and sampler): the sampler's length would be another
        # directory's, so indices overrun or samples are skipped
        raise _fail(f"{K_DATASET} and {K_SAMPLER_DATASET} differ", "overrides after --",
                    f"Override both to the same directory: {K_DATASET}={rel} {K_SAMPLER_DATASET}={rel}")
    path = rel if os.path.isabs(rel) else os.path.join(tree, rel)
    h = _hints()  # runnable as written: the interpreter, the tree, and where the installer is
    get = h.installer(DOWNLOAD_VIDEO.split(" installer ", 1)[1], tree)
    media = ("videos", "*.mp4") if exp.task == "video2world" else ("images", "*.jpg")
    if K_DATASET in ov:  # the user's own directory (--dataset or the overrides): the seed's download hints do not fit
        todo = f"Pass --dataset=<a directory with {media[0]}/{media[1]} and t5_xxl/*.pickle>"
        if os.path.isdir(path) and _nonempty(os.path.join(path, media[0]), media[1]):
            t5 = (f"-m scripts.get_t5_embeddings --dataset_path {shlex.quote(os.path.abspath(path))}"
                  f"{' --is_image' if exp.task != 'video2world' else ''}")
            todo = f"Put one prompt per {media[0][:-1]} in {path}/metas/<name>.txt, then run `{h.in_tree(t5, tree)}`"
    elif exp.smoke:
        todo = f"Run `{h.in_tree(MAKE_SMOKE[7:], tree)}`"
    elif exp.task == "video2world":
        todo = f"Run `{get}` then `{h.in_tree(T5_VIDEO[7:], tree)}`"
    else:
        todo = f"Run `{get}`, `{h.in_tree(EXTRACT_IMAGES[7:], tree)}` then `{h.in_tree(T5_IMAGES[7:], tree)}`"
    if not os.path.isdir(path):
        raise _fail(f"dataset directory {path} does not exist", exp_name, todo)
    if not _nonempty(os.path.join(path, media[0]), media[1]):
        raise _fail(f"dataset directory {path} has no {media[0]}/{media[1]}", exp_name, todo)
    if not _nonempty(os.path.join(path, "t5_xxl"), "*.pickle"):
        raise _fail(f"dataset directory {path} has no t5_xxl/*.pickle (T5 embeddings)", exp_name, todo)


def _checkpoints_root() -> str | None:
    """upstream's --checkpoints from COSMOS_PREDICT2_ARGS (imaginaire/constants.py), if the user moved them."""
    args = shlex.split(os.environ.get("COSMOS_PREDICT2_ARGS", ""))
    for i, a in enumerate(args):
        if a.startswith("--checkpoints="):
            return a.split("=", 1)[1]
        if a == "--checkpoints" and i + 1 < len(args):
            return args[i + 1]
    return None


def _hints():
    """scripts/hints.py beside this file (loaded by path: this runs as a file and is imported by tests)."""
    spec = importlib.util.spec_from_file_location("_cosmos_hints", os.path.join(os.path.dirname(__file__), "hints.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def check_checkpoints(exp_name: str, exp: Experiment, tree: str, ov: dict[str, str]) -> None:
    root = _checkpoints_root()
    todo = (f"Run `{_hints().in_tree(MAKE_SMOKE[7:], tree)}`" if exp.smoke else
            f"Run `{_hints().installer(f'download --model {exp.model_id}', tree)}`")
    for key, default in ((K_DIT, exp.dit_path), (K_VAE, exp.vae_path)):
        rel = _ov_str(ov, key, default)
        if not rel:
            continue  # dit_path="" = random init
        if root and not exp.smoke and key not in ov and rel.startswith("checkpoints/"):
            rel = os.path.join(root, rel[len("checkpoints/"):])
        path = rel if os.path.isabs(rel) else os.path.join(tree, rel)
        if not os.path.isfile(path) or os.path.getsize(path) == 0:
            raise _fail(f"checkpoint {path} is missing", f"{exp_name}, {key}", todo)


def _load_device_layer(tree: str):
    """The tree's cosmos_predict2/portable/device.py, loaded by file (no package __init__, which imports models)."""
    path = os.path.join(tree, "cosmos_predict2", "portable", "device.py")
    if not os.path.isfile(path):
        return None
    spec = importlib.util.spec_from_file_location("_cosmos_device_layer", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # raises RuntimeError (one line) when COSMOS_DEVICE forces an absent device
    return mod


def detect_device(tree: str, dry_run: bool) -> tuple[str, int | None, str]:
    """(kind, device count or None, note): the tree's device layer decides (COSMOS_DEVICE included). A forced
    device that is absent fails, except in --dry-run (which plans for another host); a bad kind always fails."""
    try:
        mod = _load_device_layer(tree)
        if mod is None:  # detection lives in one place only: the device layer that apply installs
            raise _fail(f"{tree} has no cosmos_predict2/portable/device.py", "--tree",
                        "Point --tree at a tree patched by `python -m installer apply`")
        kind = mod.device_type()
    except RuntimeError as e:
        if dry_run and type(e).__name__ == "ForcedDeviceAbsent":
            return e.kind, None, f"not verified on this host: {e}"
        raise PreflightError(str(e).splitlines()[0]) from None
    except ImportError as e:
        raise _fail(f"{sys.executable} cannot import {e.name or 'torch'}", "python environment",
                    "Activate the environment that has torch (and torch_npu on Ascend), or set PYTHON=") from None
    count = None
    if kind != "cpu":
        try:
            count = mod.device_count()
        except Exception:  # a count we cannot read is not a reason to refuse to launch
            count = None
    return kind, count, ""


def memory_check(a: argparse.Namespace, exp: Experiment, kind: str, world: int, cp: int, ov: dict[str, str],
                 environ: dict[str, str], tree: str | None = None) -> str:
    """The notes line of scripts/memory_estimate.py; raises its one-line error unless --skip_memory_check. The card's
    size: --device_memory_gib, else $COSMOS_DEVICE_MEMORY_GIB, else the device layer of `tree` (not in --dry-run)."""
    spec = importlib.util.spec_from_file_location("_cosmos_mem", os.path.join(os.path.dirname(__file__),
                                                                              "memory_estimate.py"))
    mem = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mem)
    raw = a.device_memory_gib if a.device_memory_gib is not None else environ.get(mem.ENV_MEMORY)
    try:
        card = float(raw) if raw not in (None, "") else None
    except ValueError:
        card = -1.0
    if card is not None and not 0 < card < float("inf"):  # also NaN
        raise _fail(f"device memory {raw!r} is not a positive number of GiB", "--device_memory_gib or "
                    f"{mem.ENV_MEMORY}", "Pass --device_memory_gib=M, e.g. 80")
    if card is None and tree and kind != "cpu" and not a.dry_run:  # this host's card, as the device layer reads it
        try:
            card = _load_device_layer(tree).total_memory_gib(0)
        except Exception:  # an unreadable size is "unknown", as without the flag
            card = None
    frames = _ov_int(ov, K_FRAMES, exp.num_frames) if exp.num_frames is not None else None
    raw_shard = ov.get(K_SHARD, "").strip()  # upstream: -1 = the whole world, 0 = no FSDP
    shard = int(raw_shard) if raw_shard in ("-1", "0") else _ov_int(ov, K_SHARD, exp.fsdp_shard_size)
    line, err = mem.check(a.EXP, exp.task, exp.size, frames=frames, cp=cp, world=world, fsdp_shard_size=shard,
                          batch_size=_ov_int(ov, K_BATCH, exp.batch_size), ov=ov, card_gib=card, card=kind)
    if err and not a.skip_memory_check:
        raise PreflightError(err)
    return line + (" - --skip_memory_check: starting anyway" if err else "")


def dtype_note(tree: str, kind: str, exp: Experiment, choice: str | None, ov: dict[str, str]) -> str:
    """The compute-dtype decision of the tree's portable/precision.py, as one header line."""
    path = os.path.join(tree, "cosmos_predict2", "portable", "precision.py")
    if not os.path.isfile(path):
        return "compute dtype: not decided here (the tree has no cosmos_predict2/portable/precision.py)"
    spec = importlib.util.spec_from_file_location("_cosmos_precision_policy", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    try:
        line = mod.decide(kind or "cpu", choice=choice).line()
    except ValueError as e:
        raise PreflightError(str(e)) from None
    if kind == "cpu" and not exp.smoke:
        line = f"compute dtype bfloat16 (set by the experiment; the CPU policy applies to _smoke experiments: {line})"
    over = [f"{k}={ov[k]}" for k in ("model.config.precision", "model.config.pipe_config.precision") if k in ov]
    return line + (f"; overridden after --: {', '.join(over)}" if over else "")


def npu_env(environ: dict[str, str], hccl_if_ip: str | None) -> tuple[dict[str, str], list[str]]:
    """Variables to export on NPU (only those the user has not set) and notes about the ones kept."""
    want = dict(NPU_ENV_DEFAULTS)
    if hccl_if_ip:
        want["HCCL_IF_IP"] = hccl_if_ip
    out, notes = {}, []
    for k, v in want.items():
        if k in environ:
            if environ[k] != v:
                notes.append(f"{k}={environ[k]} kept from your environment (launcher default {v})")
            continue
        out[k] = v
    return out, notes


def usable_cpus() -> int:
    """Cores this process may run on (the affinity mask, e.g. a container's cpuset), else all of them."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def free_port() -> int:
    """A port nothing listens on now: the kernel's pick for an ephemeral bind (torchrun binds it moments later)."""
    import socket

    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    """True when binding the rendezvous port the way torchrun's store does (SO_REUSEADDR, all interfaces) fails."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("::" if ":" in host else "", port))
        except OSError:
            return True
    return False


def check_job(ov: dict[str, str], exp: Experiment) -> tuple[str, str, str]:
    """project/group/name are one directory level each: never absolute, never '..', so logs stay in the root."""
    parts = tuple(_ov_str(ov, k, d) for k, d in zip(K_JOB, exp.job))
    for key, val in zip(K_JOB, parts):
        if not val or val in (".", "..") or "/" in val or "\\" in val or "\0" in val:
            raise _fail(f"{key}={val} would put the run outside the output root", "override after --",
                        f"Use a plain directory name for {key}, without '/' or '..'")
    return parts  # type: ignore[return-value]


def check_output_root(root: str) -> None:
    """The output root must be creatable and writable; probed without leaving anything behind."""
    import tempfile

    probe = root
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    where = f"IMAGINAIRE_OUTPUT_ROOT={root}"
    if not os.path.isdir(probe):
        raise _fail(f"output root {root} cannot be created: {probe} is not a directory", where,
                    "Set IMAGINAIRE_OUTPUT_ROOT to a writable directory")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".train-probe-", dir=probe))
    except OSError as e:
        raise _fail(f"output root {root} is not writable ({probe}: {e.strerror})", where,
                    "Set IMAGINAIRE_OUTPUT_ROOT to a writable directory, or fix its permissions") from None


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
    check_data(a.EXP, exp, tree, ov)
    check_checkpoints(a.EXP, exp, tree, ov)

    kind, count, note = detect_device(tree, a.dry_run)
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
    elif a.hccl_if_ip:
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
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        f"--nproc_per_node={nproc}", f"--nnodes={nnodes}", f"--node_rank={node_rank}",
        f"--master_addr={master_addr}", f"--master_port={port}",
        "-m", "scripts.train", f"--config={CONFIG_FILE}", "--",
        f"experiment={a.EXP}",
        # ++ adds or replaces: registers the metrics callback whether or not the experiment already does
        f"++trainer.callbacks.train_metrics={{_target_:{METRICS_CALLBACK}}}",
        f"++trainer.callbacks.step_timing={{_target_:{STEP_TIMING_CALLBACK}}}",  # per-phase step times
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    flags = argv[: argv.index("--")] if "--" in argv else argv
    if "-h" in flags or "--help" in flags:
        _parser().print_help()
        return 0
    try:
        plan = build_plan(argv)
    except PreflightError as e:
        print(str(e), file=sys.stderr)
        return 2
    if plan.dry_run:  # a real run prints the same text as the first lines of its log (TRAIN_HEADER)
        print(describe(plan), end="")
    if plan.plan_file:
        write_plan(plan, plan.plan_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
