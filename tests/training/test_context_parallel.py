"""Context parallel 2 (two gloo ranks) equals one rank: DiT output, loss and gradients, fp32, <= 1e-5.

The same run shows the test has teeth: once the attention ops ignore the CP group the output is off by O(0.1).
"""

import json
import os
import sys

import pytest

from .trainer_runs import cpu_env, free_port, run_group

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.parametrize("exp", ["predict2_video2world_training_2b_cosmos_nemo_assets_smoke",
                                 "predict2_video2world_training_14b_cosmos_nemo_assets_smoke"])
def test_cp2_equals_cp1(smoke_tree, exp):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", os.path.join(HERE, "cp_parity_worker.py"), exp]
    proc = run_group(cmd, cwd=smoke_tree, env=cpu_env(smoke_tree), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads([l for l in proc.stdout.splitlines() if l.startswith("{")][-1])
    assert res["out_max_abs_err"] <= 1e-5 * max(1.0, res["out_scale"]), res
    assert res["loss_cp"] == pytest.approx(res["loss_ref"], rel=1e-5), res
    assert res["grad_max_rel_err"] <= 1e-4, res
    assert res["ignoring_op_max_abs_err"] > 1e-2, res
