"""The checks train.sh runs before torchrun (scripts/train_preflight.py's second part): flags and overrides,
parallel layout, dataset, checkpoints, device, memory, compute dtype, ports, output root. Each failure is a
PreflightError: ONE line `error: <what> (<where>). <what to do>.`, exit 2.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import re
import shlex
import sys

from train_experiments import (DOWNLOAD_VIDEO, EXTRACT_IMAGES, K_BATCH, K_CP, K_DATASET, K_DIT, K_FRAMES, K_HEADS,
                               K_JOB, K_SAMPLER_DATASET, K_SHARD, K_VAE, MAKE_SMOKE, NPU_ENV_DEFAULTS, T5_IMAGES,
                               T5_VIDEO, VAE_TEMPORAL_COMPRESSION, Experiment, latent_frames)

from user_errors import OneLineParser, UserError


class PreflightError(UserError):
    """One user-facing line (str(e) is the whole `error: ...` line); main() prints it and exits 2."""

    prefixed = True
    exit_code = 2


_fail = PreflightError  # _fail(what, where, todo): the name the checks below raise it by
K_SAC_MODE = "model.config.pipe_config.net.sac_config.mode"  # = memory_estimate.K_MODE


def _relay(line: str) -> PreflightError:
    """Another layer's error, already one `error: ...` line (the device layer, memory_estimate, precision)."""
    return PreflightError(line.splitlines()[0].removeprefix("error: "))



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


def _memory_estimate():
    spec = importlib.util.spec_from_file_location("_cosmos_mem", os.path.join(os.path.dirname(__file__),
                                                                              "memory_estimate.py"))
    mem = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mem)
    return mem


def check_checkpointing_mode(exp_name: str, ov: dict[str, str]) -> None:
    """A checkpointing mode given after `--` must be one the net knows and that works; upstream raises only when the
    net is built (ValueError "Invalid mode"), or for block_wise later still (TypeError in torch's wrapper)."""
    if K_SAC_MODE not in ov:
        return
    mem = _memory_estimate()
    mode, modes = _ov_str(ov, K_SAC_MODE, ""), tuple(mem.ACT_D)
    if mode not in modes:
        why = (": upstream's SACConfig gives block_wise no checkpoint function and the trainer fails on it"
               if mode == "block_wise" else "")
        raise _fail(f"checkpointing mode {mode!r} is not one of {', '.join(modes)}{why}", f"{exp_name}, {K_SAC_MODE}",
                    f"Pass one of them; {mem.FRUGAL_MODE['2B']} keeps the least activation memory")


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


def _load_device_layer(tree: str, absent_ok: bool = False):
    """The tree's cosmos_predict2/portable/device.py, loaded by file (no package __init__, which imports models).
    absent_ok: a device COSMOS_DEVICE forces but this host lacks does not raise; the module is returned with what it
    defines before detection (env_flag among it)."""
    path = os.path.join(tree, "cosmos_predict2", "portable", "device.py")
    if not os.path.isfile(path):
        return None
    spec = importlib.util.spec_from_file_location("_cosmos_device_layer", path)
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)  # raises RuntimeError (one line) when COSMOS_DEVICE forces an absent device
    except RuntimeError:
        if not absent_ok:
            raise
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
        raise _relay(str(e)) from None
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


def check_switches(tree: str, names: tuple[str, ...], environ: dict[str, str]) -> None:
    """Each boolean environment variable in `names`, read by the tree's device layer (env_flag, the one parser):
    a value that is not a switch stops here in one line instead of inside every rank."""
    names = tuple(n for n in names if n in environ)
    mod = _load_device_layer(tree, absent_ok=True) if names else None  # detect_device has judged the device
    for name in names if mod is not None else ():
        try:
            mod.env_flag(name, environ=environ)
        except ValueError as e:  # UserValueError: already one `error: ...` line
            raise _relay(str(e)) from None


def memory_check(a: argparse.Namespace, exp: Experiment, kind: str, world: int, cp: int, ov: dict[str, str],
                 environ: dict[str, str], tree: str | None = None) -> str:
    """The notes line of scripts/memory_estimate.py; raises its one-line error unless --skip_memory_check. The card's
    size: --device_memory_gib, else $COSMOS_DEVICE_MEMORY_GIB, else the device layer of `tree` (not in --dry-run)."""
    mem = _memory_estimate()
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
        raise _relay(err)
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
        raise _relay(str(e)) from None
    if kind == "cpu" and not exp.smoke:
        line = f"compute dtype bfloat16 (set by the experiment; the CPU policy applies to _smoke experiments: {line})"
    over = [f"{k}={ov[k]}" for k in ("model.config.precision", "model.config.pipe_config.precision") if k in ov]
    return line + (f"; overridden after --: {', '.join(over)}" if over else "")


def npu_env(environ: dict[str, str], hccl_if_ip: str | None) -> tuple[dict[str, str], list[str]]:
    """Variables to export on NPU (only those the user has not set) and notes about the ones kept."""
    want = dict(NPU_ENV_DEFAULTS)
    if hccl_if_ip:
        want["HCCL_IF_IP"] = hccl_if_ip
    return defaults_env(want, environ)


def defaults_env(want: dict[str, str], environ: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """The variables of `want` the user has not set, and a note for each one kept from the environment."""
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
