"""The READMEs say what is true: the two commands exist and CI runs the test command word for word, and the
Chinese README stays in step with the English one (same commands, sections, patches, experiments)."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EN = (REPO / "README.md").read_text(encoding="utf-8")
ZH = (REPO / "README.zh-CN.md").read_text(encoding="utf-8")
SERIES = next((REPO / "patches").iterdir()) / "series"
TEST_COMMAND = "bash tools/setup_venv.sh && .venv/bin/python -m pytest -q tests"
MAIN_COMMAND = "bash tools/smoke_run.sh"


def _code_blocks(text: str) -> list[str]:
    return re.findall(r"```(?:bash|text)?\n(.*?)```", text, flags=re.S)


def test_two_commands_in_both_readmes_and_ci_runs_the_test_command():
    for text in (EN, ZH):
        blocks = [b.strip() for b in _code_blocks(text)]
        assert MAIN_COMMAND in blocks and TEST_COMMAND in blocks
    ci = (REPO / ".ci/run").read_text()
    assert TEST_COMMAND in ci.splitlines()
    assert (REPO / "tools/smoke_run.sh").is_file() and (REPO / "tools/setup_venv.sh").is_file()


def _commands(text: str) -> list[str]:
    """Code blocks without trailing comments (comments are translated)."""
    return [re.sub(r"\s+#.*$", "", b, flags=re.M) for b in _code_blocks(text)]


def test_chinese_readme_in_step():
    assert len(re.findall(r"^## ", EN, flags=re.M)) == len(re.findall(r"^## ", ZH, flags=re.M))
    assert _commands(EN) == _commands(ZH), "commands differ between README.md and README.zh-CN.md"
    patches = [l.strip().removesuffix(".patch") for l in SERIES.read_text().splitlines()
               if l.strip() and not l.startswith("#")]
    for name in patches:
        assert name in EN and name in ZH, name
    for sub in ("apply", "status", "verify", "revert", "digest", "doctor", "download"):
        assert f"**{sub}**" in EN and f"**{sub}**" in ZH, sub


def test_support_table_is_the_doctors():
    from installer import support

    for line in support.table_markdown().splitlines()[2:]:
        component = line.split("|")[1].strip()
        assert component in EN, component


# ------------------------------------------------------------------------------------------------------------------
# Every README code block runs as written, or says here why it is not run. Blocks are keyed by their first line
# (trailing comments dropped, so both languages share a key); a block in neither table fails
# test_every_readme_block_is_classified until it is added to one of them.
RUN = {  # first line -> where the README says to run it
    "python -m installer download --model 2B-Video2World --model t5-11b": "checkout",
    "python -m scripts.get_t5_embeddings_from_cosmos_nemo_assets --dataset_path datasets/cosmos_nemo_assets": "tree",
    'python -m scripts.hf_text2image outputs/t2i-tiny --prompt "a robot arm picks up a red cube" --tiny': "tree",
}
NOT_RUN = {  # first line -> why not here
    "bash tools/smoke_run.sh": "the whole set-up (venv, PyPI) plus a CPU training run; tests/launcher runs the same "
                               "steps (apply, make_smoke_dataset, train.sh smoke) one by one",
    "bash tools/setup_venv.sh && .venv/bin/python -m pytest -q tests": "it is CI itself (checked against .ci/run)",
    "python -m installer apply   [--target DIR] [--pin COMMIT] [--source pypi|git|PATH] [--dry-run] [--force]":
        "a synopsis of the subcommands, not a command",
    "bash train.sh --EXP=predict2_video2world_training_2b_cosmos_nemo_assets_smoke --fresh":
        "three CPU training runs; tests/launcher/test_real_runs.py runs the same --fresh / --resume / --resume=iter_N "
        "sequence on a smoke tree",
    "python -m scripts.encode_latents --EXP=predict2_video2world_training_2b_cosmos_nemo_assets":
        "the real 2B config with its VAE checkpoint and the Cosmos-NeMo-Assets videos; tests/training/"
        "test_latent_cache.py encodes and trains from the cache on the smoke experiment",
    "bash train.sh --dry-run --EXP=predict2_video2world_training_14b_cosmos_nemo_assets --nproc_per_node=8 \\":
        "needs the 14B checkpoints and dataset in the tree; tests/launcher/test_memory_estimate.py runs the same "
        "flags with --dry-run on a skeleton tree",
    "source /usr/local/Ascend/ascend-toolkit/set_env.sh":
        "an Ascend host with CANN installed; tests/npu_contract checks the requirements files' pairing against the "
        "real torch-npu wheels",
    "bash train.sh --EXP=predict2_video2world_training_2b_cosmos_nemo_assets \\":
        "8 NPUs, HCCL and the real checkpoints; tests/launcher checks these flags with --dry-run",
    'python scripts/hf_text2image.py outputs/t2i --prompt "a robot arm picks up a red cube" -v':
        "downloads the published pipelines from the hub; the same scripts run offline with --tiny above and on tiny "
        "pipeline folders in tests/inference",
}


def _fenced(text: str) -> list[str]:
    """Every fenced block, whatever its language tag."""
    return [body for _, body in re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)]


def _key(block: str) -> str:
    return re.sub(r"\s+#.*$", "", block.strip().splitlines()[0]).rstrip()


def test_every_readme_block_is_classified():
    for name, text in (("README.md", EN), ("README.zh-CN.md", ZH)):
        blocks = _fenced(text)
        assert len(blocks) == len(_code_blocks(text)), f"{name}: a fenced block with another language tag"
        for block in blocks:
            key = _key(block)
            assert (key in RUN) != (key in NOT_RUN), (
                f"{name}: the code block starting {key!r} is new: add it to RUN in tests/test_docs.py (with where "
                "it runs) so the test runs it, or to NOT_RUN with the reason")
    assert set(map(_key, _fenced(EN))) == set(RUN) | set(NOT_RUN), "a classified block left the README"


def _user_checkout(tmp_path: Path, applied_tree: Path) -> tuple[Path, Path]:
    """A checkout as the README assumes one (installer/, patches/, overlay/, train.sh) with `apply` done in it."""
    import shutil

    co = tmp_path / "checkout"
    co.mkdir()
    for name in ("installer", "patches", "overlay", "train.sh"):
        (co / name).symlink_to(REPO / name)
    tree = co / "cosmos-predict2"
    shutil.copytree(applied_tree, tree, symlinks=True)
    return co, tree


def _offline_hub(tmp_path: Path) -> Path:
    """A huggingface_hub cache holding what the README's download commands fetch (tiny stand-ins: two short
    videos, a tiny T5 with T5-XXL's width, placeholder DiT/VAE bytes), under the real names and pinned revisions."""
    import sys

    sys.path.insert(0, str(REPO / "tests" / "download"))
    sys.path.insert(0, str(REPO / "tests" / "dataprep"))
    from dataprep_helpers import build_tiny_t5, write_mp4
    from test_download import PINS, fill_cache

    cache = tmp_path / "hub"
    t5 = build_tiny_t5(tmp_path / "t5")
    fill_cache(cache, "google-t5/t5-11b", PINS["google-t5/t5-11b"],
               {p.name: p.read_bytes() for p in t5.iterdir() if p.is_file()})
    v2w = "nvidia/Cosmos-Predict2-2B-Video2World"
    fill_cache(cache, v2w, PINS[v2w], {"model-720p-16fps.pt": b"dit", "tokenizer/tokenizer.pth": b"vae"})
    clips = {}
    for i in range(2):
        write_mp4(tmp_path / "clips" / f"clip{i}.mp4", frames=12, seed=i)
        clips[f"nemo_diffusion_example_data/clip{i}.mp4"] = (tmp_path / "clips" / f"clip{i}.mp4").read_bytes()
    fill_cache(cache, "nvidia/Cosmos-NeMo-Assets", "0" * 40, clips, repo_type="dataset")
    return cache


def test_readme_commands_run_as_written(applied_tree, tmp_path):
    """The RUN blocks in README order, each through bash exactly as printed, from where the README says, with the
    venv's `python` first on PATH (what `source .venv/bin/activate` does) and the hub offline: download into the
    tree, prepare both datasets, then the offline inference demo."""
    import os
    import subprocess
    import sys

    co, tree = _user_checkout(tmp_path, applied_tree)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "COSMOS_", "PYTHONPATH"))}
    env.update(PATH=f"{os.path.dirname(sys.executable)}:{env.get('PATH', '')}", HF_HUB_OFFLINE="1",
               HF_HUB_CACHE=str(_offline_hub(tmp_path)), HF_HOME=str(tmp_path / "hf_home"), TRANSFORMERS_OFFLINE="1",
               OMP_NUM_THREADS="2", TOKENIZERS_PARALLELISM="false")
    ran = []
    for block in _fenced(EN):
        where = RUN.get(_key(block))
        if where is None:
            continue
        r = subprocess.run(["bash", "-e", "-c", block], cwd=co if where == "checkout" else tree, env=env,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"{block}\n--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-3000:]}"
        ran.append(_key(block))
    assert ran == list(RUN)
    assert (tree / "checkpoints/nvidia/Cosmos-Predict2-2B-Video2World/model-720p-16fps.pt").read_bytes() == b"dit"
    for ds, media in (("cosmos_nemo_assets", "videos/*.mp4"), ("cosmos_nemo_assets_images", "images/*.jpg")):
        assert len(list((tree / "datasets" / ds).glob(media))) == 2, ds
        assert len(list((tree / "datasets" / ds / "t5_xxl").glob("*.pickle"))) == 2, ds
    from PIL import Image

    with Image.open(tree / "outputs/t2i-tiny/output.png") as im:
        im.load()
        assert im.size == (96, 64)
    import av

    with av.open(str(tree / "outputs/v2w-tiny/output.mp4")) as c:
        assert sum(1 for _ in c.decode(c.streams.video[0])) == 9
    assert not (co / "checkpoints").exists() and not (co / "datasets").exists()
