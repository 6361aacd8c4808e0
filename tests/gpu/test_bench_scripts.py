"""CPU checks of the GPU scripts (bench/, bench/parity/, bench/device/): they run, count FLOPs as documented, and
fail with one line.

The GPU numbers themselves live in BENCHMARKS.md; these tests keep the scripts that produce them working in CI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"  # benchmarks
PARITY = BENCH / "parity"  # cross-device and CP parity checks
DEVICE_RUNS = BENCH / "device"  # what runs on / is carried to the GPU machine


def _env(tree: Path | None = None) -> dict:
    env = dict(os.environ, COSMOS_DEVICE="cpu", OMP_NUM_THREADS="1", TORCH_DEVICE_BACKEND_AUTOLOAD="0")
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    return env


def _rows(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_bench_dit_tiny_counts_flops_and_variants_agree(applied_tree):
    r = subprocess.run([sys.executable, str(BENCH / "bench_dit.py"), "--tiny", "--res", "480",
                        "--variants", "anchor,ours", "--steps", "1", "--warmup", "1"],
                       cwd=applied_tree, env=_env(applied_tree), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rows = [x for x in _rows(r.stdout) if x.get("bench") == "dit"]
    assert [x["variant"] for x in rows] == ["anchor", "ours"]
    blocks, heads, head_dim, S, n_text = 2, 4, 16, 4 * 2 * 4, 512  # tiny net: 2 blocks, 64 ch, 4 heads; T=4, 4x8
    for x in rows:
        assert x["finite"] and x["S"] == S
        assert x["fwd_attn_flops"] == blocks * (4 * S * S * head_dim * heads + 4 * S * n_text * head_dim * heads)
        assert x["flops_per_step"] == 3 * x["fwd_flops"] == 3 * (x["fwd_linear_flops"] + x["fwd_attn_flops"])
        assert x["fwd_linear_flops"] > 0
    # anchor (bf16 RoPE multiply, eager ops, upstream SAC) and ours compute the same function up to bf16 rounding
    assert abs(rows[0]["loss"] - rows[1]["loss"]) <= 1e-2 * abs(rows[1]["loss"])


def test_bench_dit_t2i_with_optimizer_step(applied_tree):
    """--net t2i builds the Text2Image net on one image latent (T=1) and times the optimizer step with it;
    ours_unfused computes the same function as ours."""
    r = subprocess.run([sys.executable, str(BENCH / "bench_dit.py"), "--tiny", "--net", "t2i", "--optimizer",
                        "--variants", "ours,ours_unfused", "--steps", "2", "--warmup", "1"],
                       cwd=applied_tree, env=_env(applied_tree), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rows = [x for x in _rows(r.stdout) if x.get("bench") == "dit"]
    assert [(x["variant"], x["res"], x["mode"]) for x in rows] == [("ours", "t2i", "fwd+bwd+opt"),
                                                                   ("ours_unfused", "t2i", "fwd+bwd+opt")]
    S = 1 * 2 * 4  # T=1, 4x8 latents patched 2x2
    for x in rows:
        assert x["finite"] and x["S"] == S
    assert rows[0]["loss"] == rows[1]["loss"]  # on CPU both run upstream's eager expressions


def test_bench_dit_trainer_work_names_its_paths(applied_tree):
    """--trainer-work adds GradClip and the EMA update (the tree's code) and says which EMA path it took (the lerp
    kernel, or why not: on CPU, CUDA only, and no kernel plan built); phase_ms (CUDA events) is empty off CUDA."""
    r = subprocess.run([sys.executable, str(BENCH / "bench_dit.py"), "--tiny", "--net", "t2i", "--optimizer",
                        "--trainer-work", "--variants", "ours", "--steps", "2", "--warmup", "1"],
                       cwd=applied_tree, env=_env(applied_tree), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rows = [x for x in _rows(r.stdout) if x.get("bench") == "dit"]
    assert [x["mode"] for x in rows] == ["fwd+bwd+opt+clip+ema"]
    x = rows[0]
    assert x["ema_kernel"] == "device cpu (CUDA only)" and x["phase_ms"] == {} and x["finite"]
    assert x["ema_kernel_stats"]["launches"] == 0 and x["ema_kernel_stats"]["tables"] == 0
    assert x["clip_check"] == ["before the step"]  # CPU: FusedAdam's foreach path cannot skip a step on the device

def test_bench_dit_fsdp_variants_wrap_the_net_as_the_trainer(applied_tree):
    """<variant>_fsdp (upstream's per-module FSDP2 units on a one-device mesh) and _fsdproot (the root unit only):
    the same step as the plain variant, loss equal to fp32 rounding on CPU (the FSDP2 nodes may change the order of
    gradient sums, not the forward)."""
    r = subprocess.run([sys.executable, str(BENCH / "bench_dit.py"), "--tiny", "--net", "t2i", "--optimizer",
                        "--variants", "ours,ours_fsdp,ours_fsdproot", "--steps", "2", "--warmup", "1"],
                       cwd=applied_tree, env=_env(applied_tree), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rows = [x for x in _rows(r.stdout) if x.get("bench") == "dit"]
    assert [x["variant"] for x in rows] == ["ours", "ours_fsdp", "ours_fsdproot"]
    assert all(x["finite"] for x in rows)
    for x in rows[1:]:
        assert x["loss"] == pytest.approx(rows[0]["loss"], rel=1e-4), (x["variant"], x["loss"], rows[0]["loss"])


def test_bench_dit_profile_row_splits_time_by_category(applied_tree, tmp_path):
    trace = tmp_path / "bare.json"
    r = subprocess.run([sys.executable, str(BENCH / "bench_dit.py"), "--tiny", "--res", "480", "--variants", "ours",
                        "--steps", "1", "--warmup", "1", "--profile", "--profile-steps", "2",
                        "--profile-trace", str(trace)],
                       cwd=applied_tree, env=_env(applied_tree), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    prof = [x for x in _rows(r.stdout) if x.get("bench") == "dit_profile"]
    assert len(prof) == 1 and prof[0]["variant"] == "ours" and prof[0]["profiled_steps"] == 2
    # the trace holds one ProfilerStep# range per profiled step, as train.sh --profile_steps writes: trace_gaps
    # reads it, and --compare sets it beside itself with no difference
    g = subprocess.run([sys.executable, str(BENCH / "trace_gaps.py"), str(trace), "--compare", str(trace)],
                       capture_output=True, text=True, timeout=120)
    assert g.returncode == 0, g.stderr
    rows = _rows(g.stdout)
    assert [(x["bench"], x.get("trace")) for x in rows] == [("trace_gaps", None)] * 2 + [("trace_gaps", "b")] * 2 + [
        ("trace_compare", None)]
    cmp = rows[-1]
    assert cmp["a"] == cmp["b"] and cmp["a"]["steps"] == 2 and cmp["launches_only_in_a"] == 0
    assert all(d["d_ms"] == 0 for d in cmp["top_diffs"])
    cats = prof[0]["category_ms"]
    # on CPU the aten ops are profiled: the net's matmuls and its attention must both be found and named
    assert cats.get("gemm", 0) > 0 and cats.get("attention", 0) > 0, cats
    assert abs(sum(prof[0]["category_share"].values()) - 1) < 1e-3
    assert prof[0]["top_kernels"] and all(k["cat"] in cats for k in prof[0]["top_kernels"])


def test_kernel_categories_of_known_cuda_kernel_names():
    sys.path.insert(0, str(BENCH))
    try:
        import bench_dit
    finally:
        sys.path.remove(str(BENCH))
    cat = bench_dit.kernel_category
    assert cat("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x128x128") == "attention"
    assert cat("void pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel") == "attention"
    assert cat("nvjet_tst_256x128_64x4_2x1_v_bz_coopB_TNN") == "gemm"
    assert cat("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64") == "gemm"
    assert cat("triton_poi_fused__to_copy_mul_0") == "compiled_elementwise"
    assert cat("ncclDevKernel_AllGather_RING_LL") == "nccl"
    assert cat("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add>") == "other_elementwise"


def test_bench_dit_refuses_full_size_on_cpu_in_one_line(applied_tree):
    r = subprocess.run([sys.executable, str(BENCH / "bench_dit.py"), "--res", "480"], cwd=applied_tree,
                       env=_env(applied_tree), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error:") and len(r.stderr.strip().splitlines()) == 1


def test_bench_dit_outside_a_tree_fails_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, str(BENCH / "bench_dit.py"), "--tiny"], cwd=tmp_path, env=_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error:") and "patched tree" in r.stderr


@pytest.mark.parametrize("delta, ok", [(5e-5, True), (5e-4, False)])
def test_parity_compare_uses_the_relative_tolerance(tmp_path, delta, ok):
    a = {"device": "cpu", "losses": [2.0, 1.5, 1.0]}
    b = {"device": "cuda:0", "attn": "math", "losses": [2.0, 1.5 * (1 + delta), 1.0]}
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(json.dumps(a))
    pb.write_text(json.dumps(b))
    r = subprocess.run([sys.executable, str(PARITY / "parity_dit.py"), "--compare", str(pa), str(pb), "--tol", "1e-4"],
                       capture_output=True, text=True, timeout=120)
    row = _rows(r.stdout)[0]
    assert row["ok"] is ok and (r.returncode == 0) is ok
    assert row["max_rel"] == pytest.approx(delta, rel=1e-6)


def test_parity_run_on_cpu_takes_the_device_layers_device(applied_tree, tmp_path):
    """The CPU side of the cross-device parity (what bench/device/prepare_gpu_carry.sh runs): the device comes from the
    tree's device layer (COSMOS_DEVICE=cpu), so attention stays on auto (math is pinned on CUDA only)."""
    out, init = tmp_path / "cpu.json", tmp_path / "init.pt"
    r = subprocess.run([sys.executable, str(PARITY / "parity_dit.py"), "--steps", "2", "--init", str(init),
                        "--out", str(out)], cwd=applied_tree, env=_env(applied_tree), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    row = json.loads(out.read_text())
    assert (row["device"], row["name"], row["attn"], len(row["losses"])) == ("cpu", "cpu", "auto", 2) and init.is_file()


def test_cp_parity_without_a_gpu_or_cpu_flag_fails_in_one_line(applied_tree):
    r = subprocess.run([sys.executable, str(PARITY / "cp_parity_cuda.py")], cwd=applied_tree, env=_env(applied_tree),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error: no GPU") and r.stderr.count("\n") == 1, r.stderr


def test_real_size_driver_asks_the_trees_device_layer(applied_tree, tmp_path):
    r = subprocess.run([sys.executable, str(DEVICE_RUNS / "real_size_scripts.py"), str(applied_tree), "--out",
                        str(tmp_path / "out")], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "device layer chose cpu" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, str(DEVICE_RUNS / "real_size_scripts.py"), str(tmp_path), "--tiny"],
                       cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and r.stderr.startswith("error: ") and "device.py not found" in r.stderr, r.stderr


def test_gpu_suite_is_valid_bash():
    r = subprocess.run(["bash", "-n", str(DEVICE_RUNS / "gpu_suite.sh")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# a stand-in for train.sh: writes a metrics line every 50 ms into a nested run folder after a child of its own
# (like torchrun's workers) has started, then keeps going for minutes as a final checkpoint save would
_WRITER = r"""
import os, subprocess, sys, time
d, n, then = sys.argv[1], int(sys.argv[2]), sys.argv[3]
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
open(os.path.join(d, "child.pid"), "w").write(str(child.pid))
os.makedirs(os.path.join(d, "run", "logs"), exist_ok=True)
for i in range(n):
    with open(os.path.join(d, "run", "logs", "job.metrics.jsonl"), "a") as fh:
        fh.write('{"iteration": %d}\n' % (i + 1))
    time.sleep(0.05)
if then == "exit3":
    sys.exit(3)
time.sleep(300)
"""


def _alive(pid: int, within: float = 5.0) -> bool:
    """Still running after `within` seconds (a SIGKILL takes effect when the process is next scheduled)."""
    import time

    end = time.monotonic() + within
    while True:
        try:
            with open(f"/proc/{pid}/stat") as fh:  # a zombie (killed, not yet reaped by init) counts as gone
                if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return False
        except FileNotFoundError:
            return False
        if time.monotonic() > end:
            return True
        time.sleep(0.05)


@pytest.mark.parametrize("lines, then, timeout, rc, said", [
    (6, "save", 120, 0, "6 metrics lines"),  # stopped once the wanted lines are there, child processes too
    (3, "exit3", 120, 3, None),  # the command ends first: its own status
    (2, "save", 3, 124, "2 of 6 metrics lines after 3 s"),  # never reaches the lines: timed out, as timeout(1)
])
def test_run_until_rows_stops_the_whole_run_once_the_metrics_are_written(tmp_path, lines, then, timeout, rc, said):
    import time

    start = time.monotonic()
    r = subprocess.run([sys.executable, str(DEVICE_RUNS / "run_until_rows.py"), "--metrics-dir", str(tmp_path),
                        "--rows", "6", "--timeout", str(timeout), "--grace", "2", "--poll", "0.1", "--",
                        sys.executable, "-c", _WRITER, str(tmp_path), str(lines), then],
                       capture_output=True, text=True, timeout=200)
    assert r.returncode == rc, r.stderr[-2000:]
    assert time.monotonic() - start < 60  # not the writer's 300 s
    if said:
        assert said in r.stderr, r.stderr
    else:
        assert "run_until_rows" not in r.stderr
    # the run's own children stopped with it, also when it ended by itself (a crashed run's workers hold GPU memory)
    assert not _alive(int((tmp_path / "child.pid").read_text()))
    assert (tmp_path / "run/logs/job.metrics.jsonl").read_text().count("\n") == lines


def test_gpu_suite_stops_train_sh_runs_after_their_last_metrics_line():
    """train_e2e runs train.sh through run_until_rows.py (the final 2B save is not what the suite measures)."""
    text = (DEVICE_RUNS / "gpu_suite.sh").read_text()
    body = text.split("train_e2e() {")[1].split("\n}\n")[0]
    assert "run_until_rows.py" in body and "--rows $stop_rows" in body and "stop_rows=$iters;" in body and "bash train.sh" in body


def _dit(steps, mode="fwd+bwd+opt", variant="ours_cb"):
    return dict(bench="dit", mode=mode, variant=variant, step_s=sorted(steps)[len(steps) // 2], step_s_all=steps)


def _e2e(name, steps):
    return dict(bench="e2e", name=name, rc=0, step_s_all=steps)


def test_ratio_rows_pairs_each_train_sh_run_with_the_last_bare_step_before_it(tmp_path):
    rows = [{"bench": "env"}, _dit([9.0] * 5),  # the warm-up run: replaced by the round's own bare run
            _dit([1.0, 1.2]), _dit([5.0], mode="fwd+bwd+opt+clip+ema"),  # another mode: not a bare step
            _e2e("t2i_ratio_e2e1", [30.0] + [1.0] * 4 + [1.1, 1.1, 1.2]),  # the first 5 steps left out
            _e2e("t2i_ratio_noclip1", [7.0] * 5 + [1.21]),  # another prefix, the same round's bare step
            _dit([1.0, 1.0]), _e2e("t2i_ratio_e2e2", [1.0] * 5 + [1.0, 1.1]),
            _e2e("t2i_ratio_noclip2", [7.0] * 5 + [1.0])]
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    cmd = [sys.executable, str(DEVICE_RUNS / "ratio_rows.py"), str(path), "--e2e-prefix", "t2i_ratio_e2e",
           "--e2e-prefix", "t2i_ratio_noclip"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out, noclip = _rows(r.stdout)
    one, two = out["rounds"]
    assert (one["bare_mean_s"], one["e2e_steps"]) == (pytest.approx(1.1), 3)
    assert one["ratio_mean"] == pytest.approx((3.4 / 3) / 1.1) and one["e2e_max_over_min"] == pytest.approx(1.2 / 1.1)
    assert (two["bare_mean_s"], two["e2e_mean_s"], two["ratio_mean"]) == (1.0, pytest.approx(1.05), pytest.approx(1.05))
    assert out["ratio_mean_pooled"] == pytest.approx(((3.4 / 3) + 1.05) / 2 / 1.05)
    assert [x["ratio_mean"] for x in noclip["rounds"]] == [pytest.approx(1.1), 1.0]
    assert (out["e2e_prefix"], noclip["e2e_prefix"]) == ("t2i_ratio_e2e", "t2i_ratio_noclip")
    # a train.sh run with no bare run before it: one line, exit 1
    path.write_text("".join(json.dumps(r) + "\n" for r in [_e2e("t2i_ratio_e2e0", [1.0] * 8)] + rows))
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.startswith("error: train.sh run t2i_ratio_e2e0 has no bare-step row"), r.stderr


def test_cp_parity_worker_self_check_on_cpu(applied_tree):
    """bench/parity/cp_parity_cuda.py --cpu (gloo, smoke DiT): CP=2 reproduces CP=1, the CP-ignoring op does not."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from tests import procgroup  # torchrun's workers die with it on timeout

    r = procgroup.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
                       str(PARITY / "cp_parity_cuda.py"), "--cpu", "--res", "tiny", "--frames", "4",
                       "--exp", "predict2_video2world_training_2b_cosmos_nemo_assets_smoke"],
                      cwd=applied_tree, env=_env(applied_tree), timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    row = _rows(r.stdout)[0]
    assert row["out_rel_l2"] < 1e-2 and row["grad_rel_l2_all"] < 2e-2  # bf16
    assert row["ignoring_cp_out_rel_l2"] > 10 * max(row["out_rel_l2"], 1e-3)
    fp32 = row["fp32"]
    assert fp32["out_rel_l2"] < 1e-5 and fp32["grad_rel_l2_all"] < 1e-4
    assert fp32["ignoring_cp_out_rel_l2"] > 1e-2
    assert 0 < row["bf16_ref_vs_fp32_ref_rel_l2"] < 5e-2


def test_real_size_scripts_driver_tiny_on_cpu(applied_tree, tmp_path):
    """bench/device/real_size_scripts.py --tiny: every seed command of section 7 runs and its output check passes."""
    import shutil

    tree = tmp_path / "tree"
    shutil.copytree(applied_tree, tree, ignore=shutil.ignore_patterns("datasets", "checkpoints", "outputs"))
    r = subprocess.run([sys.executable, "-m", "scripts.make_smoke_dataset", "--root", str(tmp_path / "data"),
                        "--skip-vae"], cwd=tree, env=_env(tree), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    videos = tmp_path / "data" / "datasets" / "smoke" / "cosmos_nemo_assets" / "videos"
    r = subprocess.run([sys.executable, str(DEVICE_RUNS / "real_size_scripts.py"), str(tree), "--tiny", "--videos",
                        str(videos), "--out", str(tmp_path / "out"), "--v2w-steps", "1"],
                       cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rows = {x["step"]: x for x in _rows(r.stdout) if x.get("bench") == "scripts"}
    assert set(rows) == {"t5_videos", "extract_images", "t5_images", "t2i_2B", "t2i_14B", "v2w_2B", "v2w_14B"}
    assert all(x["rc"] == 0 for x in rows.values()), rows
    assert rows["t5_videos"]["pickles"] == 2 and rows["t5_images"]["pickles"] == rows["extract_images"]["images"] > 0
    assert rows["t2i_2B"]["size"] == [64, 64] and rows["v2w_14B"]["frames"] == 9


def test_trace_gaps_bills_idle_device_time_to_the_host(tmp_path):
    """bench/trace_gaps.py on a hand-written CUDA trace: busy = union of kernels, gaps with the host's Python stack
    when the device ran dry, a sync-wait gap marked as such, the launching call of the next kernel."""
    ev = [
        {"ph": "X", "cat": "user_annotation", "name": "ProfilerStep#0", "ts": 0, "dur": 1000, "tid": 1},
        {"ph": "X", "cat": "gpu_user_annotation", "name": "ProfilerStep#0", "ts": 0, "dur": 1000, "tid": 7},  # no row
        {"ph": "X", "cat": "kernel", "name": "gemm_a", "ts": 0, "dur": 200, "args": {"correlation": 1}},
        {"ph": "X", "cat": "kernel", "name": "gemm_b", "ts": 100, "dur": 200, "args": {"correlation": 2}},  # overlaps
        {"ph": "X", "cat": "kernel", "name": "adam", "ts": 800, "dur": 100, "args": {"correlation": 3}},
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaStreamSynchronize", "ts": 250, "dur": 60, "tid": 1},
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": 790, "dur": 5, "tid": 1,
         "args": {"correlation": 3}},
        {"ph": "X", "cat": "python_function", "name": "imaginaire/trainer.py(1): train", "ts": 0, "dur": 1000, "tid": 1},
        {"ph": "X", "cat": "python_function", "name": "cosmos_predict2/callbacks/grad_clip.py(9): on_before_optimizer_step",
         "ts": 280, "dur": 400, "tid": 1},
        {"ph": "X", "cat": "python_function", "name": "cosmos_predict2/portable/optim.py(5): step", "ts": 700, "dur": 250,
         "tid": 1},
        # named host ranges: two blocks' FSDP hooks (folded to one name), a nested range of the same name (counted
        # once), a compiled backward on autograd's thread
        {"ph": "X", "cat": "user_annotation", "name": "FSDP::pre_forward (blocks.0)", "ts": 10, "dur": 30, "tid": 1},
        {"ph": "X", "cat": "user_annotation", "name": "FSDP::pre_forward (blocks.1)", "ts": 50, "dur": 20, "tid": 1},
        {"ph": "X", "cat": "user_annotation", "name": "FSDP::pre_forward (blocks.1)", "ts": 55, "dur": 5, "tid": 1},
        {"ph": "X", "cat": "cpu_op", "name": "CompiledFunctionBackward", "ts": 400, "dur": 300, "tid": 7},
        {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 410, "dur": 100, "tid": 7},
    ]
    trace = tmp_path / "t.json"
    trace.write_text(json.dumps({"traceEvents": ev}))
    r = subprocess.run([sys.executable, str(BENCH / "trace_gaps.py"), str(trace), "--min-gap-ms", "0.05"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    (row,) = _rows(r.stdout)
    assert row["span_ms"] == 1.0 and row["device_busy_ms"] == 0.4 and row["device_idle_ms"] == 0.6
    gap, tail = row["top_gaps"]  # 0.3-0.8 ms (before adam), 0.9-1.0 ms (end of step)
    assert gap["gap_ms"] == 0.5 and gap["start_ms"] == 0.3 and gap["next_kernel"] == "adam"
    assert gap["sync"] == "cudaStreamSynchronize"
    assert gap["host_at_start"][-1].endswith("on_before_optimizer_step")
    assert gap["launched_by"][-1].endswith("optim.py(5): step")
    assert tail["gap_ms"] == 0.1 and tail["next_kernel"] == "(end of step)"
    assert row["host_ms"] == {"main": {"FSDP::pre_forward (blocks.N)": 0.05},
                              "thread 7": {"CompiledFunctionBackward": 0.3}}
    assert "host_in_gap" not in gap  # only with --host-in-gaps
    # --host-in-gaps 1: what every host thread did during the largest gap (0.3-0.8 ms), longest overlap first
    r = subprocess.run([sys.executable, str(BENCH / "trace_gaps.py"), str(trace), "--min-gap-ms", "0.05",
                        "--host-in-gaps", "1"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    (row,) = _rows(r.stdout)
    gap, tail = row["top_gaps"]
    assert "host_in_gap" not in tail
    seen = [(h["name"], h["thread"], h["overlap_ms"]) for h in gap["host_in_gap"]]
    assert seen == [("imaginaire/trainer.py(1): train", "main", 0.5),
                    ("cosmos_predict2/callbacks/grad_clip.py(9): on_before_optimizer_step", "main", 0.38),
                    ("CompiledFunctionBackward", "7", 0.3), ("aten::mm", "7", 0.1),
                    ("cosmos_predict2/portable/optim.py(5): step", "main", 0.1),
                    ("cudaStreamSynchronize", "main", 0.01), ("cudaLaunchKernel", "main", 0.005)]
    # --compare: the same trace with one more kernel per step (an extra launch only it has) and a longer gemm
    more = ev + [{"ph": "X", "cat": "kernel", "name": "extra_copy", "ts": 950, "dur": 20, "args": {}}]
    more = [dict(e, dur=300) if e.get("name") == "gemm_a" else e for e in more]
    other = tmp_path / "more.json"
    other.write_text(json.dumps({"traceEvents": more}))
    r = subprocess.run([sys.executable, str(BENCH / "trace_gaps.py"), str(other), "--compare", str(trace)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    cmp = _rows(r.stdout)[-1]
    assert cmp["bench"] == "trace_compare" and cmp["a"]["kernels"] == 4 and cmp["b"]["kernels"] == 3
    assert cmp["a"]["kernel_ms_sum"] == pytest.approx(0.62) and cmp["b"]["kernel_ms_sum"] == pytest.approx(0.5)
    assert [(d["name"], d["d_ms"]) for d in cmp["top_diffs"][:2]] == [("gemm_a", 0.1), ("extra_copy", 0.02)]
    assert [d["name"] for d in cmp["top_only_in_a"]] == ["extra_copy"] and cmp["launches_only_in_a"] == 1
    empty = tmp_path / "e.json"
    empty.write_text(json.dumps({"traceEvents": ev[1:]}))
    r = subprocess.run([sys.executable, str(BENCH / "trace_gaps.py"), str(empty)], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no ProfilerStep# ranges" in r.stderr


def test_bench_grad_clip_host_compares_walks_and_kept_lists(applied_tree, tmp_path):
    """bench/bench_grad_clip_host.py in a patched tree: one JSON row with both ways' host time over the Text2Image
    2B model's module tree (net + EMA net), for GradClip and the EMA update, choosing the same parameters; outside a
    tree, one error line."""
    r = subprocess.run([sys.executable, str(BENCH / "bench_grad_clip_host.py"), "--reps", "3"], cwd=applied_tree,
                       env=_env(applied_tree), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (row,) = _rows(r.stdout)
    assert row["bench"] == "grad_clip_host" and row["same_params"] is True
    assert row["model_params"] == 2 * row["net_params"] and row["modules"] > 2000  # 28 blocks, twice
    assert row["walks_ms"] > 0 and row["kept_ms"] > 0 and row["ema_walks_ms"] > 0 and row["ema_kept_ms"] > 0
    r = subprocess.run([sys.executable, str(BENCH / "bench_grad_clip_host.py")], cwd=tmp_path, env=_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error:") and r.stderr.count("\n") == 1


def test_bench_adam_host_compares_looked_up_and_kept_entries(applied_tree, tmp_path):
    """bench/bench_adam_host.py in a patched tree: one JSON row with FusedAdam.step()'s host time both ways over the
    Text2Image 2B net's 567 parameters, the kept way looking nothing up in its timed steps and the kernel path
    taken (one launch per step, not run); outside a tree, one error line."""
    r = subprocess.run([sys.executable, str(BENCH / "bench_adam_host.py"), "--reps", "3"], cwd=applied_tree,
                       env=_env(applied_tree), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (row,) = _rows(r.stdout)
    assert row["bench"] == "adam_host" and row["params"] == 567 and row["launches_per_step"] == 1
    assert row["lookups_per_step_lookup"] == 1 and row["lookups_per_step_kept"] == 0
    assert row["lookup_ms"] > 0 and row["kept_ms"] > 0
    r = subprocess.run([sys.executable, str(BENCH / "bench_adam_host.py")], cwd=tmp_path, env=_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error:") and r.stderr.count("\n") == 1


def test_bench_sac_policy_compares_fresh_and_kept_answers(applied_tree, tmp_path):
    """bench/bench_sac_policy.py in a patched tree: one JSON row from the ops the 28-block Text2Image net's
    checkpointing policies asked about in one step (two attention ops per block among them), both ways giving the
    same answers; outside a tree, one error line."""
    r = subprocess.run([sys.executable, str(BENCH / "bench_sac_policy.py"), "--reps", "2"], cwd=applied_tree,
                       env=_env(applied_tree), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (row,) = _rows(r.stdout)
    assert row["bench"] == "sac_policy" and row["same_answers"] is True and row["blocks"] == 28
    assert row["attention_ops_per_step"] == 2 * 28 and row["ops_asked_per_step"] > 1000
    assert row["afresh_ms"] > 0 and row["kept_ms"] > 0
    r = subprocess.run([sys.executable, str(BENCH / "bench_sac_policy.py")], cwd=tmp_path, env=_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error:") and r.stderr.count("\n") == 1


def test_bench_device_monitor_times_the_sample_pieces(applied_tree, tmp_path):
    """bench/bench_device_monitor.py in a patched tree on CPU: one JSON row with the host memory and table timings
    (the device fields are timed on a GPU only); outside a tree, one error line."""
    r = subprocess.run([sys.executable, str(BENCH / "bench_device_monitor.py"), "--reps", "3"], cwd=applied_tree,
                       env=_env(applied_tree), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (row,) = _rows(r.stdout)
    assert row["bench"] == "device_monitor" and row["device"] == "cpu" and "torch_readers_ms" not in row
    assert row["psutil_ms"] > 0 and row["table_ms"] > 0
    r = subprocess.run([sys.executable, str(BENCH / "bench_device_monitor.py")], cwd=tmp_path, env=_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error:") and r.stderr.count("\n") == 1


def test_sync_probe_summary_lists_sites_by_the_steps_they_synchronize(tmp_path):
    """bench/device/sync_probe.py's summary of a probe file (the trainer side runs on a GPU only): one row per site,
    the sites that synchronize in most steps first."""
    data = {"from": 6, "iterations": {"6": [["a.py:1:f", 3], ["b.py:2:g", 1]], "7": [["a.py:1:f", 3]],
                                      "11": [["c.py:9:h", 2]]}}
    path = tmp_path / "probe.json"
    path.write_text(json.dumps(data))
    r = subprocess.run([sys.executable, str(BENCH / "device" / "sync_probe.py"), str(path)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    rows = _rows(r.stdout)
    assert rows[0] == {"bench": "sync_probe", "site": "a.py:1:f", "iterations": [6, 7], "per_step": [3, 3]}
    assert {tuple(x["iterations"]) for x in rows[1:]} == {(6,), (11,)}


def test_bench_sac_modes_counts_what_each_mode_keeps(applied_tree, tmp_path):
    """bench/bench_sac_modes.py in a patched tree (upstream's Video2World net config at 128 channels): predict2_2b_720
    keeps 10 D-wide values per token and block at the forward's end (7 of 16 matmul outputs, 8 D, + the attention and
    the block input), attention_only 2; attention_only recomputes 16 D^2 more matmul FLOPs, and its backward makes
    those 8 values again for the block it recomputes; both give the same gradients bit for bit, and the preflight's
    estimate for the real 2B 720p run falls by more than half. An unknown mode or a bad width: one error line."""
    r = subprocess.run([sys.executable, str(BENCH / "bench_sac_modes.py"), "--channels", "128",
                        "--modes", "predict2_2b_720,attention_only"], cwd=applied_tree, env=_env(applied_tree),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    upstream, lean = _rows(r.stdout)
    assert (upstream["mode"], lean["mode"]) == ("predict2_2b_720", "attention_only")
    assert abs(upstream["saved_d"] - 10) < 0.1 and abs(lean["saved_d"] - 2) < 0.1, (upstream, lean)
    assert lean["matmul_flops_d2"] - upstream["matmul_flops_d2"] == pytest.approx(16, abs=0.05)
    assert lean["backward_extra_d"] - upstream["backward_extra_d"] == pytest.approx(8, abs=0.1)
    assert upstream["grads_equal"] and lean["grads_equal"] and lean["grads_equal_to"] == "predict2_2b_720"
    assert lean["real_2b_720p_extra_matmul_tflop"] == pytest.approx(158.7, abs=0.1)
    assert lean["train_sh_estimate_gib"] < 0.5 * upstream["train_sh_estimate_gib"]
    for args in (["--modes", "predict2_2b_720,frugal"], ["--channels", "100"]):
        r = subprocess.run([sys.executable, str(BENCH / "bench_sac_modes.py"), *args], cwd=applied_tree,
                           env=_env(applied_tree), capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and r.stderr.startswith("error:") and r.stderr.count("\n") == 1, r.stderr
    r = subprocess.run([sys.executable, str(BENCH / "bench_sac_modes.py")], cwd=tmp_path, env=_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error:") and r.stderr.count("\n") == 1
