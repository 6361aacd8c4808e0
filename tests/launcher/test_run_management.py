"""train.sh run management before torchrun: fresh or resumed (the first line says which), --resume=<checkpoint>,
--dataset, the rendezvous port, processes per CPU host, run paths kept inside the output root, an unwritable
output root and a train.sh copied out of its tree. The real train.sh with --dry-run (or refused) on a skeleton tree;
a checkpoint here is upstream's layout with placeholder bytes (only its presence is read before torchrun).
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys

import pytest

from launcher_helpers import REPO, SMOKE, refused, run_train_sh, touch

EXP = SMOKE["v2w_2b"]
JOB = "posttraining/video2world_smoke/2b_cosmos_nemo_assets_smoke"


def dry(tree: str, args: list[str], env: dict | None = None, **kw) -> tuple[str, list[str], dict]:
    """(first line, the torchrun command as argv, environment printed) of a dry run."""
    e = {"COSMOS_DEVICE": "cpu", "IMAGINAIRE_OUTPUT_ROOT": os.path.join(tree, "outputs"), **(env or {})}
    r = run_train_sh([f"--EXP={EXP}", "--dry-run", *args], tree=tree, env=e, timeout=120, **kw)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    env_lines = r.stdout.split("environment set by train.sh:\n", 1)[1].split("notes:\n", 1)[0].splitlines()
    return lines[0], shlex.split(lines[2]), dict(ln.strip().split("=", 1) for ln in env_lines if "=" in ln)


def checkpoint(run_dir: str, *iterations: int, latest: int | None = None) -> None:
    for it in iterations:
        for kind in ("model", "optim", "scheduler", "trainer"):
            touch(f"{run_dir}/checkpoints/{kind}/iter_{it:09d}.pt")
    touch(f"{run_dir}/checkpoints/latest_checkpoint.txt", f"iter_{(latest or iterations[-1]):09d}.pt\n".encode())


# --- fresh / resume -------------------------------------------------------------------------------------------

def test_first_run_says_new(skeleton_tree):
    first, _, _ = dry(skeleton_tree, [])
    assert first == f"run: new run in {skeleton_tree}/outputs/{JOB} (no checkpoint there)"


def test_rerun_says_it_resumes_and_from_where(skeleton_tree):
    checkpoint(f"{skeleton_tree}/outputs/{JOB}", 2)
    first, cmd, env = dry(skeleton_tree, ["--", "trainer.max_iter=5"])
    assert first.startswith(f"run: resuming {skeleton_tree}/outputs/{JOB} from iteration 2 "
                            "(checkpoints/model/iter_000000002.pt; ")
    assert "--fresh" in first
    assert "COSMOS_RESUME_CHECKPOINT" not in env  # the latest one: upstream's own choice


def test_rerun_at_max_iter_is_refused_not_a_silent_no_op(skeleton_tree):
    checkpoint(f"{skeleton_tree}/outputs/{JOB}", 3)
    r = run_train_sh([f"--EXP={EXP}"], tree=skeleton_tree,
                     env={"COSMOS_DEVICE": "cpu", "IMAGINAIRE_OUTPUT_ROOT": f"{skeleton_tree}/outputs"})
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: the run already reached iteration 3 and "
                                                             "trainer.max_iter is 3")
    assert "--fresh" in r.stderr
    assert not os.path.exists(f"{skeleton_tree}/outputs/{JOB}/logs")  # torchrun never started


def test_fresh_never_resumes_and_leaves_the_old_run(skeleton_tree):
    old = f"{skeleton_tree}/outputs/{JOB}"
    checkpoint(old, 3)
    os.makedirs(f"{old}-2")  # taken: the next free name is used
    first, cmd, env = dry(skeleton_tree, ["--fresh", "--", "job.name=2b_cosmos_nemo_assets_smoke"])
    assert first == f"run: new run in {old}-3 (--fresh; {old} holds an earlier run, left as it is)"
    assert cmd[-1] == "job.name=2b_cosmos_nemo_assets_smoke-3" and cmd.count("job.name=2b_cosmos_nemo_assets_smoke") == 0
    assert env["COSMOS_TRAIN_METRICS"].startswith(f"{old}-3/logs/")
    assert sorted(os.listdir(f"{old}/checkpoints/model")) == ["iter_000000003.pt"]


def test_fresh_in_an_empty_run_directory_keeps_its_name(skeleton_tree):
    first, cmd, _ = dry(skeleton_tree, ["--fresh"])
    assert first == f"run: new run in {skeleton_tree}/outputs/{JOB} (--fresh)"
    assert not any(c.startswith("job.name=") for c in cmd)


def test_resume_from_a_chosen_checkpoint(skeleton_tree):
    run = f"{skeleton_tree}/outputs/{JOB}"
    checkpoint(run, 1, 2)
    first, _, env = dry(skeleton_tree, [f"--resume={run}/checkpoints/model/iter_000000001.pt"])
    assert env["COSMOS_RESUME_CHECKPOINT"] == "iter_000000001.pt"  # read by the patched Checkpointer.load
    assert first.startswith(f"run: resuming {run} from iteration 1 (checkpoints/model/iter_000000001.pt, not the "
                            "latest iter_000000002.pt")


def test_resume_another_run_directory_trains_in_it(skeleton_tree, tmp_path):
    other = f"{tmp_path}/elsewhere/proj/grp/myrun"
    checkpoint(other, 2)
    first, cmd, env = dry(skeleton_tree, [f"--resume={other}", "--", "trainer.max_iter=4"])
    assert first.startswith(f"run: resuming {other} from iteration 2 ")
    assert env["IMAGINAIRE_OUTPUT_ROOT"] == f"{tmp_path}/elsewhere"
    assert cmd[-3:] == ["job.project=proj", "job.group=grp", "job.name=myrun"]
    assert env["COSMOS_TRAIN_METRICS"].startswith(f"{other}/logs/")


@pytest.mark.parametrize("args,fragment", [
    (["--resume"], "nothing to resume"),
    (["--resume=/nonexistent/run"], "/nonexistent/run does not exist"),
    (["--fresh", "--resume"], "--fresh and --resume both given"),
])
def test_resume_refusals(skeleton_tree, args, fragment):
    assert fragment in refused(skeleton_tree, [f"--EXP={EXP}", *args], env={"COSMOS_DEVICE": "cpu"})


def test_resume_a_file_that_is_not_a_checkpoint(skeleton_tree, tmp_path):
    touch(f"{tmp_path}/x.pt")
    line = refused(skeleton_tree, [f"--EXP={EXP}", f"--resume={tmp_path}/x.pt"], env={"COSMOS_DEVICE": "cpu"})
    assert "is not a training checkpoint" in line


# --- dataset ----------------------------------------------------------------------------------------------------

def test_dataset_flag_sets_both_copies(skeleton_tree):
    _, cmd, _ = dry(skeleton_tree, ["--dataset=datasets/smoke/cosmos_nemo_assets"])  # relative to the caller's cwd
    path = f"{skeleton_tree}/datasets/smoke/cosmos_nemo_assets"
    assert f"dataloader_train.dataset.dataset_dir={path}" in cmd
    assert f"dataloader_train.sampler.dataset.dataset_dir={path}" in cmd


def test_dataset_flag_bad_path_hint_names_the_flag_not_the_smoke_generator(skeleton_tree):
    line = refused(skeleton_tree, [f"--EXP={EXP}", "--dataset=/nonexistent/data"], env={"COSMOS_DEVICE": "cpu"})
    assert "/nonexistent/data does not exist" in line
    assert "--dataset=<a directory with videos/*.mp4 and t5_xxl/*.pickle>" in line and "make_smoke_dataset" not in line


def test_dataset_without_embeddings_names_the_t5_command(skeleton_tree, tmp_path):
    touch(f"{tmp_path}/mine/videos/a.mp4")
    line = refused(skeleton_tree, [f"--EXP={EXP}", f"--dataset={tmp_path}/mine"], env={"COSMOS_DEVICE": "cpu"})
    assert "has no t5_xxl/*.pickle" in line
    assert f"-m scripts.get_t5_embeddings --dataset_path {tmp_path}/mine`" in line and "metas/" in line


def test_dataset_flag_and_a_different_override(skeleton_tree):
    line = refused(skeleton_tree, [f"--EXP={EXP}", "--dataset=/data/a", "--", "dataloader_train.dataset.dataset_dir=/data/b"],
                   env={"COSMOS_DEVICE": "cpu"})
    assert "--dataset=/data/a and dataloader_train.dataset.dataset_dir=/data/b both given" in line


# --- port -------------------------------------------------------------------------------------------------------

def test_default_port_is_a_free_one_and_printed(skeleton_tree):
    r = run_train_sh([f"--EXP={EXP}", "--dry-run"], tree=skeleton_tree, env={"COSMOS_DEVICE": "cpu"})
    assert r.returncode == 0, r.stderr
    port = int(r.stdout.split("--master_port=", 1)[1].split()[0])
    assert f"  port {port} (free on this host, picked by --master_port=auto)" in r.stdout.splitlines()
    with socket.socket() as s:  # free indeed (nothing listens there)
        s.bind(("", port))


def test_port_in_use_is_one_line_before_torchrun(skeleton_tree):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        line = refused(skeleton_tree, [f"--EXP={EXP}", f"--master_port={port}"], env={"COSMOS_DEVICE": "cpu"})
    assert line == (f"error: port {port} is in use on this host (--master_port). Pass --master_port=auto (single "
                    "node) or another free port.")


def test_auto_port_needs_one_node(skeleton_tree):
    line = refused(skeleton_tree, [f"--EXP={EXP}", "--nnodes=2", "--master_addr=10.0.0.1", "--master_port=auto"],
                   env={"COSMOS_DEVICE": "cpu"})
    assert "--master_port=auto needs a single node" in line


# --- host and paths (issue 15, items 9 and 10) ----------------------------------------------------------------

def test_more_processes_than_cpu_cores_refused(skeleton_tree):
    cores = len(os.sched_getaffinity(0))
    line = refused(skeleton_tree, [f"--EXP={SMOKE['t2i_2b']}", "--nproc_per_node=1000"], env={"COSMOS_DEVICE": "cpu"})
    assert line == (f"error: --nproc_per_node=1000 but this node has {cores} CPU cores usable by this process "
                    f"(--nproc_per_node). Pass --nproc_per_node <= {cores}.")


@pytest.mark.parametrize("override", ["job.project=/abs", "job.name=../..", "job.group=a/b", "job.name=.."])
def test_run_paths_outside_the_output_root_refused(skeleton_tree, override):
    line = refused(skeleton_tree, [f"--EXP={EXP}", "--", override], env={"COSMOS_DEVICE": "cpu"})
    assert f"{override} would put the run outside the output root" in line


def test_unwritable_output_root_is_one_line(skeleton_tree, tmp_path):
    for root, fragment in (("/proc/cosmos-outputs", "is not writable"),
                           (f"{tmp_path}/file/outputs", "is not a directory")):
        touch(f"{tmp_path}/file")
        r = run_train_sh([f"--EXP={EXP}"], tree=skeleton_tree,
                         env={"COSMOS_DEVICE": "cpu", "IMAGINAIRE_OUTPUT_ROOT": root})
        assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1, r.stderr
        assert r.stderr.startswith(f"error: output root {root} ") and fragment in r.stderr
        assert f"(IMAGINAIRE_OUTPUT_ROOT={root})" in r.stderr


def test_train_sh_through_symlinks(tmp_path):
    """The checkout's top-level train.sh is a git symlink to overlay/train.sh. Run as `bash train.sh` in the
    checkout, as overlay/train.sh, or through another symlink elsewhere, it finds the scripts beside the real file."""
    link = tmp_path / "bin" / "train.sh"
    link.parent.mkdir()
    link.symlink_to(os.path.join(REPO, "train.sh"))
    env = {**os.environ, "PYTHON": sys.executable}
    for script, cwd in (("train.sh", REPO), ("overlay/train.sh", REPO), (str(link), tmp_path)):
        r = subprocess.run(["bash", script, "--help"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and EXP in r.stdout, (script, r.stderr)


def test_train_sh_copied_out_of_its_tree(skeleton_tree, tmp_path):
    alone = tmp_path / "copy" / "train.sh"
    alone.parent.mkdir()
    shutil.copy(os.path.join(REPO, "train.sh"), alone)
    r = run_train_sh([f"--EXP={EXP}"], env={"COSMOS_DEVICE": "cpu"}, script=str(alone))
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"error: train.sh is not inside a patched cosmos-predict2 tree (no "
                               f"scripts/train_preflight.py beside {alone}")
    assert "--tree=<patched tree>" in r.stderr
    # with --tree it runs from anywhere
    os.makedirs(f"{skeleton_tree}/scripts")
    for name in ("train_preflight.py", "train_experiments.py", "train_checks.py", "train_plan.py", "hints.py",
                 "user_errors.py"):
        shutil.copy(os.path.join(REPO, "overlay/scripts", name), f"{skeleton_tree}/scripts/")
    r = run_train_sh([f"--tree={skeleton_tree}", f"--EXP={EXP}", "--dry-run"],
                     env={"COSMOS_DEVICE": "cpu", "IMAGINAIRE_OUTPUT_ROOT": f"{skeleton_tree}/outputs"},
                     script=str(alone))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1] == f"cd {skeleton_tree}"


def test_smoke_run_passes_train_sh_flags_through(launch_tree, tmp_path):
    """tools/smoke_run.sh TARGET [train.sh flags] [-- overrides]: what follows the target reaches train.sh."""
    target = str(tmp_path / "tree")
    shutil.copytree(launch_tree, target, symlinks=True)
    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    r = run_train_sh([target, "--dry-run", f"--master_port={port}", "--fresh", "--", "trainer.max_iter=7"],
                     env={"SMOKE_SETUP_VENV": "0", "COSMOS_DEVICE": "cpu", "IMAGINAIRE_OUTPUT_ROOT": None},
                     script=os.path.join(REPO, "tools/smoke_run.sh"), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    run = next(i for i, ln in enumerate(lines) if ln.startswith("run: "))
    assert lines[run] == f"run: new run in {target}/outputs/{JOB} (--fresh)"
    cmd = shlex.split(lines[run + 2])
    assert f"--master_port={port}" in cmd and cmd[-1] == "trainer.max_iter=7" and f"experiment={EXP}" in cmd


@pytest.mark.parametrize("exp, user, expected", [
    (SMOKE["t2i_2b"], None, "1"),  # Text2Image: compiled blocks by default (portable/block_compile.py, CUDA only)
    (SMOKE["t2i_2b"], "0", None),  # the user's 0 is kept (train.sh sets nothing)
    (SMOKE["v2w_2b"], None, None),  # Video2World: eager blocks unless asked
])
def test_text2image_compiles_blocks_unless_told(skeleton_tree, exp, user, expected):
    e = {"COSMOS_DEVICE": "cpu", "IMAGINAIRE_OUTPUT_ROOT": os.path.join(skeleton_tree, "outputs")}
    if user is not None:
        e["COSMOS_COMPILE_BLOCKS"] = user
    r = run_train_sh([f"--EXP={exp}", "--dry-run"], tree=skeleton_tree, env=e, timeout=120)
    assert r.returncode == 0, r.stderr
    env_lines = r.stdout.split("environment set by train.sh:\n", 1)[1].split("notes:\n", 1)[0].splitlines()
    env = dict(ln.strip().split("=", 1) for ln in env_lines if "=" in ln)
    assert env.get("COSMOS_COMPILE_BLOCKS") == expected
