"""The device environment train.sh exports: NPU variables only on NPU, the user's own values never replaced.

NPU is forced with COSMOS_DEVICE=npu and --dry-run (no torch_npu here; --dry-run plans without verifying the
device, and says so). The plan is checked twice: as printed by `train.sh --dry-run`, and as the exact bash that
train.sh sources, evaluated by bash itself (`env` after sourcing), so what is printed is what would run.
"""

from __future__ import annotations

import os
import subprocess
import sys

from launcher_helpers import REPO, SMOKE, run_train_sh

PREFLIGHT = os.path.join(REPO, "overlay/scripts/train_preflight.py")
NPU_DEFAULTS = {
    "TASK_QUEUE_ENABLE": "2",
    "CPU_AFFINITY_CONF": "2",
    "HCCL_WHITELIST_DISABLE": "1",
    "HCCL_CONNECT_TIMEOUT": "1200",
    "HCCL_DETERMINISTIC": "false",
    "PYTORCH_NPU_ALLOC_CONF": "expandable_segments:True",
}
ALL_NPU = {*NPU_DEFAULTS, "HCCL_IF_IP"}


def _clean_env(extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ALL_NPU and k not in ("COSMOS_DEVICE", "IMAGINAIRE_OUTPUT_ROOT", "PYTORCH_CUDA_ALLOC_CONF")}
    env.update(extra)
    return env


def sourced_env(tree: str, args: list[str], extra: dict) -> dict:
    """Run the preflight as train.sh does, source its plan in bash, return the resulting environment."""
    plan = os.path.join(tree, "plan.sh")
    env = _clean_env(extra)
    r = subprocess.run([sys.executable, PREFLIGHT, f"--plan-file={plan}", f"--tree={tree}", *args],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    out = subprocess.run(["bash", "-c", f'source "{plan}" && env -0'], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    return dict(item.split("=", 1) for item in out.stdout.split("\0") if "=" in item)


def printed_env(stdout: str) -> dict:
    lines = stdout.split("environment set by train.sh:\n", 1)[1].split("notes:\n", 1)[0].splitlines()
    return dict(ln.strip().split("=", 1) for ln in lines if "=" in ln)


def test_npu_forced_sets_all_defaults(skeleton_tree):
    args = [f"--EXP={SMOKE['v2w_2b']}", "--dry-run", "--hccl_if_ip=192.168.3.7"]
    r = run_train_sh(args, tree=skeleton_tree, env=_clean_env({"COSMOS_DEVICE": "npu"}))
    assert r.returncode == 0, r.stderr
    printed = printed_env(r.stdout)
    assert "device npu (not verified on this host" in r.stdout
    env = sourced_env(skeleton_tree, args, {"COSMOS_DEVICE": "npu"})
    for k, v in {**NPU_DEFAULTS, "HCCL_IF_IP": "192.168.3.7"}.items():
        assert printed[k] == v
        assert env[k] == v
    assert not os.path.exists(os.path.join(skeleton_tree, "outputs")), "--dry-run must not create outputs"


def test_npu_user_values_win(skeleton_tree):
    user = {"TASK_QUEUE_ENABLE": "1", "HCCL_CONNECT_TIMEOUT": "3600", "HCCL_IF_IP": "10.1.1.1",
            "PYTORCH_NPU_ALLOC_CONF": "expandable_segments:False"}
    args = [f"--EXP={SMOKE['v2w_2b']}", "--dry-run", "--hccl_if_ip=192.168.3.7"]
    r = run_train_sh(args, tree=skeleton_tree, env=_clean_env({"COSMOS_DEVICE": "npu", **user}))
    assert r.returncode == 0, r.stderr
    printed = printed_env(r.stdout)
    for k in user:
        assert k not in printed, f"{k} would be overwritten"
        assert f"{k}={user[k]} kept from your environment" in r.stdout
    env = sourced_env(skeleton_tree, args, {"COSMOS_DEVICE": "npu", **user})
    for k, v in user.items():
        assert env[k] == v
    for k in set(NPU_DEFAULTS) - set(user):
        assert env[k] == NPU_DEFAULTS[k]


def test_cpu_sets_nothing_npu(skeleton_tree):
    args = [f"--EXP={SMOKE['v2w_2b']}", "--dry-run", "--hccl_if_ip=192.168.3.7"]
    r = run_train_sh(args, tree=skeleton_tree, env=_clean_env({"COSMOS_DEVICE": "cpu"}))
    assert r.returncode == 0, r.stderr
    assert not ALL_NPU & set(printed_env(r.stdout))
    assert "--hccl_if_ip ignored: device is cpu" in r.stdout
    env = sourced_env(skeleton_tree, args, {"COSMOS_DEVICE": "cpu"})
    assert not ALL_NPU & set(env)


def test_auto_detection_on_this_host_is_not_npu(skeleton_tree):
    r = run_train_sh([f"--EXP={SMOKE['v2w_2b']}", "--dry-run"], tree=skeleton_tree, env=_clean_env({}))
    assert r.returncode == 0, r.stderr
    assert "device cpu" in r.stdout or "device cuda" in r.stdout
    assert not ALL_NPU & set(printed_env(r.stdout))


def test_dry_run_command_and_default_output_root(skeleton_tree):
    r = run_train_sh([f"--EXP={SMOKE['v2w_2b']}", "--nproc_per_node=2", "--nnodes=1", "--node_rank=0",
                      "--master_addr=127.0.0.1", "--master_port=29611", "--dry-run", "--", "trainer.max_iter=7",
                      "model_parallel.context_parallel_size=2"],
                     tree=skeleton_tree, env=_clean_env({"COSMOS_DEVICE": "cpu", "IMAGINAIRE_OUTPUT_ROOT": None}))
    assert r.returncode == 0, r.stderr
    run, cmd = r.stdout.splitlines()[0], r.stdout.splitlines()[2]
    assert run == ("run: new run in " + os.path.join(skeleton_tree, "outputs/posttraining/video2world_smoke/"
                                                     "2b_cosmos_nemo_assets_smoke") + " (no checkpoint there)")
    assert cmd.startswith(f"{sys.executable} -m torch.distributed.run --nproc_per_node=2 --nnodes=1 --node_rank=0 "
                          "--master_addr=127.0.0.1 --master_port=29611 -m scripts.train "
                          "--config=cosmos_predict2/configs/base/config.py -- "
                          f"experiment={SMOKE['v2w_2b']} ")
    assert cmd.endswith("trainer.max_iter=7 model_parallel.context_parallel_size=2")
    assert "cosmos_predict2.portable.metrics.TrainMetricsCallback" in cmd
    printed = printed_env(r.stdout)
    assert printed["IMAGINAIRE_OUTPUT_ROOT"] == "outputs"
    log = r.stdout.split("log: ", 1)[1].strip()
    assert log.startswith(os.path.join(skeleton_tree, "outputs/posttraining/video2world_smoke/2b_cosmos_nemo_assets_smoke/logs/train-"))
    assert "world size 2, context parallel 2, data parallel 1" in r.stdout


def test_user_output_root_kept(skeleton_tree, tmp_path):
    root = str(tmp_path / "elsewhere")
    r = run_train_sh([f"--EXP={SMOKE['t2i_14b']}", "--dry-run", "--", "job.name=mine"], tree=skeleton_tree,
                     env=_clean_env({"COSMOS_DEVICE": "cpu", "IMAGINAIRE_OUTPUT_ROOT": root}))
    assert r.returncode == 0, r.stderr
    assert "IMAGINAIRE_OUTPUT_ROOT" not in printed_env(r.stdout)
    assert r.stdout.split("log: ", 1)[1].startswith(os.path.join(root, "posttraining/text2image_smoke/mine/logs/"))


def test_multi_node_command(skeleton_tree):
    # one process per node: a CPU host allows no more processes than cores
    args = [f"--EXP={SMOKE['v2w_14b']}", "--nproc_per_node=1", "--nnodes=16", "--node_rank=1",
            "--master_addr=10.0.0.5", "--master_port=6000", "--dry-run"]
    r = run_train_sh(args, tree=skeleton_tree, env=_clean_env({"COSMOS_DEVICE": "cpu"}))
    assert r.returncode == 0, r.stderr
    assert ("--nproc_per_node=1 --nnodes=16 --node_rank=1 --master_addr=10.0.0.5 --master_port=6000 -m scripts.train "
            in r.stdout.splitlines()[2])
    assert "world size 16, context parallel 1, data parallel 16" in r.stdout
    # only node 0 runs the report (global rank 0 writes the metrics)
    env = sourced_env(skeleton_tree, args, {"COSMOS_DEVICE": "cpu"})  # also leaves plan.sh for the check below
    assert not ALL_NPU & set(env)
    plan = open(os.path.join(skeleton_tree, "plan.sh")).read()
    assert "TRAIN_NODE_RANK=1" in plan.splitlines()


CUDA_DEFAULTS = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}


def test_cuda_sets_the_allocator_default_unless_set(skeleton_tree):
    """On CUDA the allocator grows segments in place (reserved memory close to allocated, the way bench/ measured);
    a user's own PYTORCH_CUDA_ALLOC_CONF is kept, with a note. Forced with COSMOS_DEVICE=cuda and --dry-run."""
    args = [f"--EXP={SMOKE['v2w_2b']}", "--dry-run"]
    base = _clean_env({"COSMOS_DEVICE": "cuda"})
    r = run_train_sh(args, tree=skeleton_tree, env=base)
    assert r.returncode == 0, r.stderr
    assert printed_env(r.stdout)["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    assert not ALL_NPU & set(printed_env(r.stdout))
    env = sourced_env(skeleton_tree, args, {"COSMOS_DEVICE": "cuda"})
    assert env["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    user = {**base, "PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:512"}
    r = run_train_sh(args, tree=skeleton_tree, env=user)
    assert r.returncode == 0, r.stderr
    assert "PYTORCH_CUDA_ALLOC_CONF" not in printed_env(r.stdout)
    assert "PYTORCH_CUDA_ALLOC_CONF=max_split_size_mb:512 kept from your environment" in r.stdout


def test_cpu_and_npu_leave_the_cuda_allocator_alone(skeleton_tree):
    for dev in ("cpu", "npu"):
        r = run_train_sh([f"--EXP={SMOKE['v2w_2b']}", "--dry-run"], tree=skeleton_tree,
                         env=_clean_env({"COSMOS_DEVICE": dev}))
        assert r.returncode == 0, r.stderr
        assert not set(CUDA_DEFAULTS) & set(printed_env(r.stdout)), dev
