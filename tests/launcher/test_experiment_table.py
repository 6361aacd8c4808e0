"""train_preflight.EXPERIMENTS against upstream's own config objects (composed in a patched tree).

The launcher validates world size, heads, latent frames, FSDP shard size, data and checkpoints from its table;
if an experiment file changes (upstream or the smoke experiments), this test says which field drifted.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

from launcher_helpers import REPO

DUMP = r"""
import importlib, json, sys
from imaginaire.utils.config_helper import get_config_module, override
out = {}
for exp in sys.argv[1:]:
    config = importlib.import_module(get_config_module("cosmos_predict2/configs/base/config.py")).make_config()
    config = override(config, ["--", f"experiment={exp}"])
    mc = config.model.config
    dl = config.dataloader_train
    out[exp] = dict(
        cp=config.model_parallel.context_parallel_size,
        num_heads=mc.pipe_config.net.num_heads,
        state_t=mc.pipe_config.state_t,
        num_frames=dl.dataset.get("num_frames"),
        sampler_num_frames=dl.sampler.dataset.get("num_frames"),
        dataset_dir=dl.dataset.dataset_dir,
        sampler_dataset_dir=dl.sampler.dataset.dataset_dir,
        batch_size=dl.batch_size,
        fsdp_shard_size=mc.fsdp_shard_size,
        dit_path=mc.model_manager_config.dit_path,
        vae_path=mc.pipe_config.tokenizer.vae_pth,
        job=[config.job.project, config.job.group, config.job.name],
        model_target=str(config.model._target_),
        max_iter=config.trainer.max_iter,
    )
print("JSON" + json.dumps(out))
"""


def _table():
    spec = importlib.util.spec_from_file_location("train_preflight", os.path.join(REPO, "overlay/scripts/train_preflight.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


def test_table_matches_upstream_configs(launch_tree):
    pf = _table()
    env = {**os.environ, "PYTHONPATH": launch_tree}
    env.pop("COSMOS_PREDICT2_ARGS", None)  # upstream's default checkpoints/ root
    r = subprocess.run([sys.executable, "-c", DUMP, *pf.EXPERIMENTS], cwd=launch_tree, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    got = json.loads(r.stdout.rsplit("JSON", 1)[1])
    for name, exp in pf.EXPERIMENTS.items():
        g = got[name]
        want = dict(
            cp=exp.cp, num_heads=exp.num_heads, num_frames=exp.num_frames, sampler_num_frames=exp.num_frames,
            dataset_dir=exp.dataset_dir, sampler_dataset_dir=exp.dataset_dir, batch_size=exp.batch_size,
            fsdp_shard_size=exp.fsdp_shard_size, dit_path=exp.dit_path, vae_path=exp.vae_path, job=list(exp.job),
            max_iter=exp.max_iter,
        )
        for k, v in want.items():
            assert g[k] == v, f"{name}: {k} table={v!r} config={g[k]!r}"
        assert ("Video2World" if exp.task == "video2world" else "Text2Image") in g["model_target"], name
        if exp.task == "video2world":
            # the DiT's latent T is what context parallel splits: the table's frame count must produce it
            assert pf.latent_frames(exp, exp.num_frames) == g["state_t"], name
