"""installer/download.py against huggingface_hub's own machinery: a pre-filled hub cache (HF_HUB_OFFLINE=1) and
a loopback server answering like the hub (tests/download/hub_server.py) through HF_ENDPOINT. The CLI runs in a
subprocess so huggingface_hub reads the environment exactly as it would for a user."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hub_server import HubServer, HubState, Repo  # noqa: E402

from installer import pin  # noqa: E402
from tests.dataprep.dataprep_helpers import assert_one_error_line as one_error_line  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DOWNLOAD = REPO / "installer" / "download.py"

_spec = importlib.util.spec_from_file_location("download_under_test", DOWNLOAD)
download = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = download  # dataclasses look their module up there
_spec.loader.exec_module(download)
PINS = pin.active().checkpoints  # the revisions of the default pin (patches/<commit>/upstream.toml)

# The interpreter that runs the CLI: this one, or (test_fresh_venv.py) a venv holding the newest huggingface_hub
# that setup.py allows, so the whole suite also runs against that release.
DOWNLOAD_PYTHON = os.environ.get("COSMOS_TEST_DOWNLOAD_PYTHON") or sys.executable
V2W = "nvidia/Cosmos-Predict2-2B-Video2World"
T5 = "google-t5/t5-11b"


def run_cli(tmp_path: Path, *args: str, endpoint: str | None = None, offline: bool = False,
            token: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_") and k != "HUGGING_FACE_HUB_TOKEN"}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_CACHE=str(tmp_path / "hub_cache"),
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_ETAG_TIMEOUT="5", HF_HUB_DOWNLOAD_TIMEOUT="5")
    if endpoint:
        env["HF_ENDPOINT"] = endpoint
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    if token:
        env["HF_TOKEN"] = token
    cmd = [DOWNLOAD_PYTHON, str(DOWNLOAD), "--checkpoint-dir", str(tmp_path / "checkpoints"),
           "--dataset-dir", str(tmp_path / "datasets"), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def fill_cache(cache: Path, repo_id: str, rev: str, files: dict[str, bytes], repo_type: str = "model",
               ref: str | None = "main") -> None:
    """Write huggingface_hub's cache layout: blobs/<etag>, snapshots/<rev>/<path> -> blob, refs/<ref>."""
    base = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    for rel, data in files.items():
        etag = hashlib.sha1(data).hexdigest()
        blob = base / "blobs" / etag
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = base / "snapshots" / rev / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    if ref:
        (base / "refs").mkdir(parents=True, exist_ok=True)
        (base / "refs" / ref).write_text(rev)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_cache_gives_seed_layout(tmp_path):
    cache = tmp_path / "hub_cache"
    fill_cache(cache, V2W, PINS[V2W], {
        "model-720p-16fps.pt": b"dit-weights",
        "model-480p-10fps.pt": b"other-resolution",  # in the cache from another download: must not be laid out
        "tokenizer/tokenizer.pth": b"vae-weights",
    })
    fill_cache(cache, T5, PINS[T5], {
        "config.json": b"{}", "pytorch_model.bin": b"t5-weights", "spiece.model": b"sp", "tf_model.h5": b"tf",
    })
    fill_cache(cache, "nvidia/Cosmos-NeMo-Assets", "a" * 40, {
        "nemo_diffusion_example_data/clip_a.mp4": b"mp4-a", "nemo_diffusion_example_data/clip_b.mp4": b"mp4-b",
        "README.md": b"readme",
    }, repo_type="dataset")
    r = run_cli(tmp_path, "--model", "2B-Video2World", "--model", "t5-11b", "--dataset", "cosmos-nemo-assets",
                offline=True)
    assert r.returncode == 0, r.stdout + r.stderr
    ck = tmp_path / "checkpoints"
    v2w = ck / "nvidia" / "Cosmos-Predict2-2B-Video2World"
    assert (v2w / "model-720p-16fps.pt").read_bytes() == b"dit-weights"
    assert (v2w / "tokenizer" / "tokenizer.pth").read_bytes() == b"vae-weights"
    assert not (v2w / "model-480p-10fps.pt").exists()
    assert not (v2w / "model-720p-16fps.pt").is_symlink()  # a real file (hard link), survives a cache cleanup
    t5 = ck / "google-t5" / "t5-11b"
    assert sorted(p.name for p in t5.iterdir()) == ["config.json", "pytorch_model.bin", "spiece.model"]
    videos = tmp_path / "datasets" / "cosmos_nemo_assets" / "videos"
    assert sorted(p.name for p in videos.iterdir()) == ["clip_a.mp4", "clip_b.mp4"]
    assert (videos / "clip_b.mp4").read_bytes() == b"mp4-b"


def test_offline_partial_snapshot_is_reported(tmp_path):
    fill_cache(tmp_path / "hub_cache", V2W, PINS[V2W], {"model-720p-16fps.pt": b"dit"})
    line = one_error_line(run_cli(tmp_path, "--model", "2B-Video2World", offline=True))
    assert "incomplete" in line and "tokenizer/tokenizer.pth" in line


def test_offline_empty_cache(tmp_path):
    line = one_error_line(run_cli(tmp_path, "--model", "t5-11b", offline=True))
    assert "HF_HUB_OFFLINE=1" in line and T5 in line and "HF_HUB_CACHE" in line


def test_unreachable_endpoint_suggests_mirror(tmp_path):
    line = one_error_line(run_cli(tmp_path, "--model", "t5-11b", endpoint=f"http://127.0.0.1:{free_port()}"))
    assert "cannot reach" in line and "HF_ENDPOINT=https://hf-mirror.com" in line


def t5_repo(**kw) -> Repo:
    return Repo(T5, PINS[T5], {"config.json": b'{"d_model": 8}', "pytorch_model.bin": b"x" * 4096,
                               "tf_model.h5": b"never-fetched"}, **kw)


def test_online_download_through_endpoint_and_rerun_uses_cache(tmp_path):
    state = HubState()
    state.add(t5_repo())
    state.add(Repo("nvidia/Cosmos-NeMo-Assets", "b" * 40, {"nemo_diffusion_example_data/v1.mp4": b"video-bytes",
                                                           "notes.txt": b"n"}, repo_type="dataset"))
    with HubServer(state) as url:
        r = run_cli(tmp_path, "--model", "t5-11b", "--dataset", "cosmos-nemo-assets", endpoint=url)
        assert r.returncode == 0, r.stdout + r.stderr
        assert not any("tf_model.h5" in g for g in state.file_gets)
        t5 = tmp_path / "checkpoints" / "google-t5" / "t5-11b"
        assert (t5 / "pytorch_model.bin").read_bytes() == b"x" * 4096 and not (t5 / "tf_model.h5").exists()
        assert (tmp_path / "datasets/cosmos_nemo_assets/videos/v1.mp4").read_bytes() == b"video-bytes"
        gets = len(state.file_gets)
        r = run_cli(tmp_path, "--model", "t5-11b", "--dataset", "cosmos-nemo-assets", endpoint=url)
        assert r.returncode == 0, r.stderr
        assert len(state.file_gets) == gets  # everything came from the hub cache the second time


def test_t5_safetensors_preferred_over_bin(tmp_path):
    state = HubState()
    state.add(Repo(T5, PINS[T5], {"config.json": b"{}", "pytorch_model.bin": b"pickled", "tf_model.h5": b"tf",
                                  "model.safetensors": b"safe", "spiece.model": b"sp"}))
    with HubServer(state) as url:
        r = run_cli(tmp_path, "--model", "t5-11b", endpoint=url)
    assert r.returncode == 0, r.stderr
    assert sorted(g.split("/")[-1] for g in state.file_gets) == ["config.json", "model.safetensors", "spiece.model"]
    t5 = tmp_path / "checkpoints" / "google-t5" / "t5-11b"
    assert sorted(p.name for p in t5.iterdir()) == ["config.json", "model.safetensors", "spiece.model"]


def test_gated_repo_without_token(tmp_path):
    state = HubState()
    state.add(t5_repo(access="gated"))
    with HubServer(state) as url:
        line = one_error_line(run_cli(tmp_path, "--model", "t5-11b", endpoint=url))
    assert "gated" in line and "no Hugging Face token" in line
    assert "HF_TOKEN" in line and "huggingface-cli login" in line and f"{url}/{T5}" in line


def test_gated_repo_with_valid_token_downloads(tmp_path):
    state = HubState()
    state.add(t5_repo(access="gated"))
    with HubServer(state) as url:
        r = run_cli(tmp_path, "--model", "t5-11b", endpoint=url, token=state.good_token)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "checkpoints/google-t5/t5-11b/config.json").exists()


def test_invalid_token(tmp_path):
    state = HubState()
    state.add(t5_repo(access="gated"))
    with HubServer(state) as url:
        line = one_error_line(run_cli(tmp_path, "--model", "t5-11b", endpoint=url, token="hf_expired"))
    assert "token was rejected" in line and "HF_TOKEN" in line


def test_repo_not_found(tmp_path):
    state = HubState()  # serves nothing
    with HubServer(state) as url:
        line = one_error_line(run_cli(tmp_path, "--model", "t5-11b", endpoint=url))
    assert "not found" in line and T5 in line


def test_failures_are_one_line_each_and_other_targets_still_download(tmp_path):
    state = HubState()
    state.add(t5_repo())
    state.add(Repo("nvidia/Cosmos-Guardrail1", PINS["nvidia/Cosmos-Guardrail1"], {"a.bin": b"a"}))
    state.add(Repo("meta-llama/Llama-Guard-3-8B", PINS["meta-llama/Llama-Guard-3-8B"],
                   {"config.json": b"{}", "original/consolidated.pth": b"skip"}, access="gated"))
    with HubServer(state) as url:
        r = run_cli(tmp_path, "--model", "guardrail", "--model", "t5-11b", endpoint=url)
    line = one_error_line(r)
    assert "meta-llama/Llama-Guard-3-8B" in line and "gated" in line
    assert (tmp_path / "checkpoints/nvidia/Cosmos-Guardrail1/a.bin").exists()
    assert (tmp_path / "checkpoints/google-t5/t5-11b/config.json").exists()


def test_nothing_requested_and_plan_of_all(tmp_path):
    line = one_error_line(run_cli(tmp_path))
    assert "--model" in line
    repos = [it.repo_id for it in download.plan(["all"], [])]
    assert repos == [
        "nvidia/Cosmos-Predict2-2B-Text2Image", "nvidia/Cosmos-Predict2-2B-Video2World",
        "nvidia/Cosmos-Predict2-14B-Text2Image", "nvidia/Cosmos-Predict2-14B-Video2World", T5,
        "nvidia/Cosmos-Guardrail1", "meta-llama/Llama-Guard-3-8B",
    ]
    r = run_cli(tmp_path, "--model", "all", "--dry-run")
    assert r.returncode == 0 and "checkpoints/nvidia/Cosmos-Predict2-14B-Text2Image" in r.stdout


def test_target_tree_is_the_default_destination(tmp_path):
    """Without --checkpoint-dir/--dataset-dir the files go into the patched tree (--target, default
    ./cosmos-predict2 like apply), where train.sh and the data scripts look; a folder that is no tree is refused
    before anything is created in it (a later apply would refuse that folder)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1")
    fill_cache(tmp_path / "hub", V2W, PINS[V2W], {"model-720p-16fps.pt": b"w", "tokenizer/tokenizer.pth": b"t"})
    tree = tmp_path / "cosmos-predict2"
    cmd = [DOWNLOAD_PYTHON, str(DOWNLOAD), "--model", "2B-Video2World"]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    line = one_error_line(r)
    assert f"{tree} does not exist (--target)" in line and not tree.exists(), line
    (tree / "other").mkdir(parents=True)
    line = one_error_line(subprocess.run([*cmd, "--target", str(tree / "other")], cwd=tmp_path, env=env,
                                         capture_output=True, text=True, timeout=120))
    assert "is not a cosmos-predict2 tree (--target)" in line and os.listdir(tree / "other") == [], line
    (tree / "cosmos_predict2").mkdir()
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tree / "checkpoints/nvidia/Cosmos-Predict2-2B-Video2World/model-720p-16fps.pt").read_bytes() == b"w"


def test_bad_model_is_one_line_naming_the_models(tmp_path):
    r = run_cli(tmp_path, "--model", "bogus")
    line = one_error_line(r)
    assert r.returncode == 2 and r.stderr.strip() == line
    assert "'bogus'" in line and all(m in line for m in [*download.MODEL_TARGETS, "all"]), line
