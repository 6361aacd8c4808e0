"""Download the checkpoints and the Cosmos-NeMo-Assets dataset into the layout upstream's configs read.

    python -m installer download --model 2B-Video2World --model t5-11b [--dataset cosmos-nemo-assets]
                                 [--target cosmos-predict2] [--checkpoint-dir DIR] [--dataset-dir DIR] [--dry-run]

Targets (`--model`, repeatable): 2B-Text2Image, 2B-Video2World, 14B-Text2Image, 14B-Video2World, t5-11b,
guardrail, all (= every one of them). `--dataset cosmos-nemo-assets` fetches the videos.

Files go into the patched tree --target (default ./cosmos-predict2, as for `apply`): TREE/checkpoints/ and
TREE/datasets/, where train.sh and the data scripts look for them (relative to the tree). --checkpoint-dir and
--dataset-dir put them elsewhere. A --target that is not a cosmos-predict2 tree is refused (a download into a new
folder there would make the later `apply` refuse that folder).

Layout produced (what upstream's experiment configs and our data scripts read):
    checkpoints/nvidia/Cosmos-Predict2-{2B,14B}-Video2World/{model-720p-16fps.pt, tokenizer/tokenizer.pth}
    checkpoints/nvidia/Cosmos-Predict2-{2B,14B}-Text2Image/{model.pt, tokenizer/tokenizer.pth}
    checkpoints/google-t5/t5-11b/...                (no tf_model.h5 or other non-torch weights; no *.bin
                                                     when the same weights exist as *.safetensors)
    checkpoints/nvidia/Cosmos-Guardrail1/...  checkpoints/meta-llama/Llama-Guard-3-8B/... (no original/)
    datasets/cosmos_nemo_assets/videos/*.mp4

How: everything goes through huggingface_hub's own cache (`snapshot_download` without local_dir), so its
progress bars, resumable partial downloads, HF_HUB_CACHE, HF_ENDPOINT (mirrors), HF_TOKEN / `huggingface-cli
login` and HF_HUB_OFFLINE all apply unchanged; nothing here passes an endpoint or a token. Files are then
hard-linked from the cache snapshot into the layout above (no second copy on disk; copied when the two folders
are on different filesystems). Repositories are pinned to the revisions upstream's download script uses.

Every failure prints one line `error: <what> (<where>). <what to do>.` and the exit status is 1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import dataclass, field

try:
    from . import pin
    from .errors import InstallerError, OneLineParser, UserError
    from .errors import redact_url as _redact_url
except ImportError:  # run or loaded as a plain file: python installer/download.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from installer import pin
    from installer.errors import InstallerError, OneLineParser, UserError
    from installer.errors import redact_url as _redact_url


@dataclass(frozen=True)
class Item:
    """One repository to fetch and where its files land."""

    repo_id: str
    repo_type: str = "model"  # "model" | "dataset"
    allow: tuple[str, ...] | None = None
    ignore: tuple[str, ...] | None = None
    required: tuple[str, ...] = ()  # paths (relative to the destination) that must exist afterwards
    prefer_safetensors: bool = False  # skip *.bin weights when the repo also has *.safetensors (same tensors)
    flatten_to: str | None = None  # dataset: put every matching file as <flatten_to>/<basename>
    dataset_name: str | None = None  # dataset: folder name under --dataset-dir
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def revision(self) -> str:
        """The revision upstream's scripts/download_checkpoints.py pins at the active pin's commit (upstream.toml)."""
        return pin.active().checkpoints.get(self.repo_id, "main")

    def destination(self, checkpoint_dir: str, dataset_dir: str) -> str:
        if self.repo_type == "dataset":
            return os.path.join(dataset_dir, self.dataset_name or self.repo_id.split("/")[-1])
        return os.path.join(checkpoint_dir, *self.repo_id.split("/"))


def _video2world(size: str) -> Item:
    return Item(
        f"nvidia/Cosmos-Predict2-{size}-Video2World",
        allow=("model-720p-16fps.pt", "tokenizer/*"),
        required=("model-720p-16fps.pt", "tokenizer/tokenizer.pth"),
    )


def _text2image(size: str) -> Item:
    return Item(
        f"nvidia/Cosmos-Predict2-{size}-Text2Image",
        allow=("model.pt", "tokenizer/*"),
        required=("model.pt", "tokenizer/tokenizer.pth"),
    )


MODEL_TARGETS: dict[str, tuple[Item, ...]] = {
    "2B-Text2Image": (_text2image("2B"),),
    "2B-Video2World": (_video2world("2B"),),
    "14B-Text2Image": (_text2image("14B"),),
    "14B-Video2World": (_video2world("14B"),),
    # torch reads config.json + pytorch_model.bin/safetensors; the TF/Flax/Rust weights are never used.
    "t5-11b": (
        Item(
            "google-t5/t5-11b",
            ignore=("tf_model.h5", "flax_model.msgpack", "rust_model.ot"),
            required=("config.json",),
            prefer_safetensors=True,
        ),
    ),
    "guardrail": (
        Item("nvidia/Cosmos-Guardrail1"),
        Item("meta-llama/Llama-Guard-3-8B", ignore=("original/*",), required=("config.json",)),
    ),
}
DATASET_TARGETS: dict[str, tuple[Item, ...]] = {
    # The repo keeps the videos under nemo_diffusion_example_data/; upstream's docs move them to videos/.
    "cosmos-nemo-assets": (
        Item(
            "nvidia/Cosmos-NeMo-Assets",
            repo_type="dataset",
            allow=("*.mp4",),
            flatten_to="videos",
            dataset_name="cosmos_nemo_assets",
        ),
    ),
}


class DownloadError(InstallerError):
    """A failure already phrased as the one line the user sees (passed as `what` alone)."""


def _err(msg: str) -> None:
    """Print a message already phrased as the whole line (the one formatter: UserError)."""
    print(UserError(msg).line(), file=sys.stderr, flush=True)


def _repo_url(item: Item) -> str:
    from huggingface_hub import constants

    base = constants.ENDPOINT.rstrip("/")
    return f"{base}/datasets/{item.repo_id}" if item.repo_type == "dataset" else f"{base}/{item.repo_id}"


def _is_connection_error(exc: BaseException) -> bool:
    """A dropped or timed-out connection, whichever HTTP client huggingface_hub uses: `requests` (< 1.0) or
    `httpx` (>= 1.0, which no longer installs requests). Recognised by type name so neither must be installed."""
    names = {"ConnectionError", "Timeout", "ConnectTimeout", "ReadTimeout", "ConnectError", "ReadError",
             "RemoteProtocolError", "TimeoutException", "NetworkError", "ChunkedEncodingError"}
    for klass in type(exc).__mro__:
        if klass.__name__ in names and klass.__module__.split(".")[0] in ("requests", "httpx", "urllib3"):
            return True
    return False


def _explain(exc: BaseException, item: Item) -> str:
    """Turn a huggingface_hub exception into one actionable line (without the 'error: ' prefix)."""
    from huggingface_hub import constants, get_token
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{item.repo_id}@{item.revision[:12]}"
    endpoint = _redact_url(constants.ENDPOINT)  # credentials in HF_ENDPOINT never reach a message
    has_token = get_token() is not None
    if isinstance(exc, GatedRepoError):
        if has_token:
            return (
                f"{item.repo_id} is a gated repository and your token has no access to it ({_repo_url(item)}). "
                "Accept its license on that page with the account of your HF_TOKEN, then run again."
            )
        return (
            f"{item.repo_id} is a gated repository and no Hugging Face token is set ({_repo_url(item)}). "
            "Accept its license on that page, then export HF_TOKEN=<token> or run `huggingface-cli login`."
        )
    if isinstance(exc, RevisionNotFoundError):
        return (
            f"the pinned revision is not on {endpoint} ({where}). The mirror may be incomplete; use "
            "HF_ENDPOINT=https://huggingface.co or copy the files into the Hugging Face cache."
        )
    if isinstance(exc, RepositoryNotFoundError):
        hint = "check HF_ENDPOINT" if not has_token else "check that HF_TOKEN belongs to an account with access"
        return (
            f"repository not found or not accessible on {endpoint} ({where}). It may be private: set HF_TOKEN "
            f"or run `huggingface-cli login`; otherwise {hint}."
        )
    if isinstance(exc, HfHubHTTPError) and exc.response is not None and exc.response.status_code == 401:
        if has_token:
            return (
                f"the Hugging Face token was rejected by {endpoint} ({where}). Replace HF_TOKEN with a valid "
                "token (huggingface.co/settings/tokens) or run `huggingface-cli login` again."
            )
        return (
            f"{endpoint} requires authentication ({where}). Export HF_TOKEN=<token> or run `huggingface-cli login`."
        )
    offline_msg = (
        f"HF_HUB_OFFLINE=1 and {item.repo_id} is not in the Hugging Face cache {constants.HF_HUB_CACHE} "
        f"({where}). Unset HF_HUB_OFFLINE on a connected host, or copy a filled cache there (HF_HUB_CACHE)."
    )
    if isinstance(exc, OfflineModeIsEnabled):  # huggingface_hub >= 1.0 raises it directly (an OSError)
        return offline_msg
    if isinstance(exc, LocalEntryNotFoundError):
        cause = exc.__cause__
        if isinstance(cause, OfflineModeIsEnabled) or constants.HF_HUB_OFFLINE:
            return offline_msg
        if isinstance(cause, HfHubHTTPError) and cause.response is not None:
            return (
                f"{endpoint} answered HTTP {cause.response.status_code} ({where}). Retry later, or use a mirror: "
                "export HF_ENDPOINT=https://hf-mirror.com."
            )
        return (
            f"cannot reach {endpoint} and {item.repo_id} is not cached ({where}). Check the network/proxy, use a "
            "mirror (export HF_ENDPOINT=https://hf-mirror.com), or copy the files into the Hugging Face cache."
        )
    if _is_connection_error(exc):
        return (
            f"cannot reach {endpoint} or the connection dropped ({where}). Check the network/proxy and run again "
            "(finished files are kept), or use a mirror: export HF_ENDPOINT=https://hf-mirror.com."
        )
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        return (
            f"{endpoint} answered HTTP {exc.response.status_code} ({where}). Run again to resume; if it persists "
            "use a mirror (HF_ENDPOINT=https://hf-mirror.com)."
        )
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc} ({getattr(exc, 'filename', None) or where}). Free disk space or fix permissions."
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"download failed: {type(exc).__name__}: {first} ({where}). Run again; partial files resume."


def _place(src: str, dst: str) -> None:
    """Hard-link (else copy) one cache file into the layout; an identical existing file is kept."""
    real = os.path.realpath(src)
    if os.path.isfile(dst) and os.path.getsize(dst) == os.path.getsize(real):
        return
    os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
    tmp = dst + ".part"
    if os.path.lexists(tmp):
        os.remove(tmp)
    try:
        os.link(real, tmp)
    except OSError:  # other filesystem, or links not allowed
        shutil.copyfile(real, tmp)
    os.replace(tmp, dst)


def _files_in(snapshot: str) -> list[str]:
    out = []
    for root, dirs, files in os.walk(snapshot, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            out.append(os.path.relpath(os.path.join(root, name), snapshot).replace(os.sep, "/"))
    return sorted(out)


def _redundant_weights(item: Item) -> list[str]:
    """['*.bin'] when the repository holds the same weights as safetensors too (transformers loads those), so the
    pickle copy (tens of GB for T5-11B) is not downloaded. Needs the file list: offline or on any hub error this
    returns [] and snapshot_download itself reports the problem."""
    if not item.prefer_safetensors:
        return []
    from huggingface_hub import HfApi

    try:
        info = HfApi().repo_info(item.repo_id, repo_type=item.repo_type, revision=item.revision)
    except Exception:  # offline, gated, unreachable: handled (and explained) by the download itself
        return []
    names = [s.rfilename for s in (info.siblings or [])]
    if any(n.endswith(".safetensors") for n in names) and any(n.endswith(".bin") for n in names):
        return ["*.bin"]
    return []


def fetch(item: Item, checkpoint_dir: str, dataset_dir: str, dry_run: bool = False) -> str:
    """Download one repository through the hub cache and lay its files out; returns the destination."""
    dest = item.destination(checkpoint_dir, dataset_dir)
    print(f"{item.repo_id} ({item.repo_type}, revision {item.revision}) -> {dest}", flush=True)
    if dry_run:
        return dest
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.utils import filter_repo_objects

    allow = list(item.allow) if item.allow else None
    ignore = list(item.ignore or ()) + _redundant_weights(item)
    try:
        snapshot = snapshot_download(
            repo_id=item.repo_id,
            repo_type=item.repo_type,
            revision=item.revision,
            allow_patterns=allow,
            ignore_patterns=ignore or None,
            # huggingface_hub >= 1.0 goes online for a commit-hash revision unless told (HF_HUB_OFFLINE alone
            # only makes that call fail); 0.x treats both the same.
            local_files_only=bool(constants.HF_HUB_OFFLINE),
        )
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # every hub failure becomes one line
        raise DownloadError(_explain(exc, item)) from exc

    wanted = list(filter_repo_objects(_files_in(snapshot), allow_patterns=allow, ignore_patterns=ignore or None))
    if not wanted:
        raise DownloadError(
            f"no matching files in the cached snapshot of {item.repo_id} ({snapshot}). Delete that folder and run "
            "again online."
        )
    placed: dict[str, str] = {}
    try:
        for rel in wanted:
            target = os.path.basename(rel) if item.flatten_to else rel
            if item.flatten_to:
                target = f"{item.flatten_to}/{target}"
            if target in placed:
                raise DownloadError(
                    f"two files of {item.repo_id} map to {target} ({placed[target]}, {rel}). Report this layout "
                    "change; fetch the files by hand meanwhile."
                )
            placed[target] = rel
            _place(os.path.join(snapshot, rel), os.path.join(dest, target))
    except OSError as exc:
        raise DownloadError(
            f"cannot write {exc.filename or dest}: {exc.strerror or exc} ({item.repo_id}). Free disk space or fix "
            "permissions, then run again."
        ) from exc
    missing = [r for r in item.required if not os.path.isfile(os.path.join(dest, r))]
    if missing:
        raise DownloadError(
            f"{item.repo_id} is incomplete: missing {', '.join(missing)} ({snapshot}). Run again online to finish "
            "the download (an offline cache may hold a partial snapshot)."
        )
    print(f"  {len(placed)} file(s) in {dest}", flush=True)
    return dest


DEFAULT_TARGET = "cosmos-predict2"


_Parser = OneLineParser  # one line (naming the valid choices) instead of usage + message


def build_parser(prog: str = "python -m installer download") -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog,
        description="Download Cosmos-Predict2 checkpoints, T5-11B, the guardrail models and Cosmos-NeMo-Assets "
        "through huggingface_hub (honours HF_ENDPOINT, HF_TOKEN, HF_HUB_CACHE, HF_HUB_OFFLINE).",
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        choices=[*MODEL_TARGETS, "all"],
        help="what to fetch; repeatable. 'all' = every model, t5-11b and guardrail.",
    )
    parser.add_argument("--dataset", action="append", default=[], choices=list(DATASET_TARGETS))
    parser.add_argument("--target", default=DEFAULT_TARGET,
                        help="the patched tree; files go to TARGET/checkpoints and TARGET/datasets "
                        "(default: ./cosmos-predict2, as for apply)")
    parser.add_argument("--checkpoint-dir", default=None, help="instead of TARGET/checkpoints")
    parser.add_argument("--dataset-dir", default=None, help="instead of TARGET/datasets")
    parser.add_argument("--dry-run", action="store_true", help="print what would be fetched and where")
    parser.add_argument("--pin", default=None, metavar="COMMIT",
                        help="upstream commit whose checkpoint revisions to use (default: the PyPI-backed pin)")
    return parser


def plan(models: list[str], datasets: list[str]) -> list[Item]:
    names = list(MODEL_TARGETS) if "all" in models else models
    items: list[Item] = []
    for name in names:
        for it in MODEL_TARGETS[name]:
            if it not in items:
                items.append(it)
    for name in datasets:
        for it in DATASET_TARGETS[name]:
            if it not in items:
                items.append(it)
    return items


def _destinations(args, items: list[Item], prog: str) -> tuple[str, str] | None:
    """(checkpoint_dir, dataset_dir); None after printing the error when --target is needed and is no tree."""
    need_target = (args.checkpoint_dir is None and any(it.repo_type != "dataset" for it in items)) or (
        args.dataset_dir is None and any(it.repo_type == "dataset" for it in items))
    if need_target and not os.path.isdir(os.path.join(args.target, "cosmos_predict2")):
        what = "does not exist" if not os.path.exists(args.target) else "is not a cosmos-predict2 tree"
        apply = f"{prog.removesuffix(' download')} apply --target {args.target}"
        _err(f"{os.path.abspath(args.target)} {what} (--target). Run `{apply}` first, pass --target with the patched "
             "tree, or choose folders with --checkpoint-dir/--dataset-dir.")
        return None
    return (args.checkpoint_dir or os.path.join(args.target, "checkpoints"),
            args.dataset_dir or os.path.join(args.target, "datasets"))


def main(argv: list[str] | None = None, prog: str = "python -m installer download") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        pin.select(args.pin)
    except Exception as exc:  # InstallerError: already the one line after "error: "
        _err(str(exc))
        return 1
    items = plan(args.model, args.dataset)
    if not items:
        _err(f"nothing to download ({prog}). Pass --model NAME (or all) and/or --dataset cosmos-nemo-assets.")
        return 2
    dirs = _destinations(args, items, prog)
    if dirs is None:
        return 2
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        _err("huggingface_hub is not installed (environment). Run `pip install huggingface_hub`.")
        return 1
    failed = 0
    for item in items:
        try:
            fetch(item, *dirs, dry_run=args.dry_run)
        except DownloadError as exc:
            _err(str(exc))
            failed += 1
        except KeyboardInterrupt:
            _err(f"interrupted while fetching {item.repo_id} (keyboard). Run the same command again to resume.")
            return 130
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
