"""The pin as data: patches/<commit>/upstream.toml is the one place that names an upstream commit.

- the TOML-subset reader agrees with tomllib (Python 3.11) on every pin file and refuses what it does not support;
- `--pin` chooses the series (and an unknown pin fails with one line);
- no code outside patches/<commit>/ and the docs hard-codes a pinned commit, sdist hash or checkpoint revision;
- the git-only pin 661da47 applies and verifies from a local clone (skips, saying why, when there is none).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from inst_helpers import MIRROR, REPO, cli, one_error_line
from installer import pin
from installer.errors import InstallerError

PORTED = "661da4774b0ca41d082a0ecbeb47550bcf07e03f"


def test_every_pin_file_parses_like_tomllib_and_round_trips():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+: the reference for our subset reader
    pins = pin.available()
    assert {p.commit for p in pins} >= {pin.default().commit, PORTED}
    for p in pins:
        text = (Path(p.directory) / pin.PIN_FILE).read_text(encoding="utf-8")
        assert pin.parse_toml(text) == tomllib.loads(text)
        assert pin.parse_toml(p.to_toml()) == tomllib.loads(p.to_toml())
        assert pin.from_file(os.path.join(p.directory, pin.PIN_FILE)) == p
        assert os.path.isfile(p.manifest_path()) and os.path.isfile(os.path.join(p.directory, "series"))


def test_exactly_one_default_pin_and_it_is_the_pypi_one():
    pins = pin.available()
    assert [p.default for p in pins].count(True) == 1
    d = pin.default()
    assert d.has_sdist and d.sdist_name == f"cosmos_predict2-{d.version}.tar.gz"
    assert not pin.find(PORTED[:7]).has_sdist  # upstream never released 661da47


def test_parser_refuses_what_it_does_not_support():
    for bad in ('a = [1, 2]', 'a = 1.5', "a = 'single'", 'a = "x"\na = "y"', 'a = "\\u00e9"', "[t\nx = 1"):
        with pytest.raises(InstallerError):
            pin.parse_toml(bad)
    assert pin.parse_toml('# c\n[x."a/b"]\nk = "v\\"q" # c\nn = -3\nb = true\n') == {
        "x": {"a/b": {"k": 'v"q', "n": -3, "b": True}}}


def test_pin_dir_name_must_match_its_commit(tmp_path):
    d = tmp_path / ("a" * 40)
    d.mkdir()
    text = (Path(pin.default().directory) / pin.PIN_FILE).read_text(encoding="utf-8")
    (d / pin.PIN_FILE).write_text(text, encoding="utf-8")
    with pytest.raises(InstallerError, match="40-digit name of its directory"):
        pin.from_file(str(d / pin.PIN_FILE))


def test_unknown_pin_is_one_error_line(tmp_path):
    line = one_error_line(cli("apply", "--pin", "deadbeef", "--target", tmp_path / "t"))
    assert "no pin 'deadbeef'" in line and pin.default().short in line
    assert not (tmp_path / "t").exists()


def test_git_only_pin_without_source_says_so(tmp_path):
    env = {"COSMOS_OVERLAY_CACHE": str(tmp_path / "cache"), "COSMOS_OVERLAY_GIT_URL": f"file://{tmp_path}/none"}
    line = one_error_line(cli("digest", "--pin", PORTED[:8], "--from-source", "pypi", env=env))
    assert "was never released on PyPI" in line and "--source git" in line


# Everything that may name an upstream commit, sdist hash or Hugging Face revision: the pin directories and docs.
_ALLOWED = ("patches/", "README.md", "README.zh-CN.md", "BENCHMARKS.md", "docs/", "tests/installer/test_pin.py",
            "tests/installer/test_port.py")


def test_no_hard_coded_pin_outside_the_pin_files():
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard"], check=True,
                           capture_output=True, text=True).stdout.split()
    needles = set()
    for p in pin.available():
        needles |= {p.commit, p.commit[:8]} | set(p.checkpoints.values())
        if p.sdist_sha256:
            needles.add(p.sdist_sha256)
    bad = []
    for f in files:
        if f.startswith(_ALLOWED) or not os.path.isfile(REPO / f):
            continue
        text = (REPO / f).read_text(encoding="utf-8", errors="replace")
        for n in needles:
            if n in text:
                bad.append(f"{f}: {n[:12]}")
        if f.endswith(".py") and re.search(r"from \.?\.?(installer\.)?manifest import .*\b(PIN|SDIST_SHA256|PYPI_"
                                           r"|GIT_URL)|manifest\.(PIN|SDIST_SHA256|PYPI_NAME|PYPI_VERSION|GIT_URL)\b",
                                           text):
            bad.append(f"{f}: the pin constants live in installer/pin.py (pin.active()), not in manifest")
    assert not bad, "pinned values hard-coded outside patches/<commit>/upstream.toml: " + "; ".join(sorted(bad))


def _clone() -> str | None:
    env = os.environ.get("COSMOS_OVERLAY_UPSTREAM_CLONE")
    if env:
        return env
    return str(MIRROR) if MIRROR.is_dir() else None


def test_git_only_pin_applies_and_verifies_from_a_local_clone(tmp_path):
    clone = _clone()
    if clone is None:
        pytest.skip("no local upstream clone: set COSMOS_OVERLAY_UPSTREAM_CLONE to a clone or mirror of "
                    "nvidia-cosmos/cosmos-predict2 that holds commit 661da47 (CI verifies the PyPI pin only)")
    tree = tmp_path / "tree"
    r = cli("apply", "--pin", PORTED[:7], "--source", clone, "--target", tree)
    assert r.returncode == 0, r.stdout + r.stderr
    recorded = (Path(pin.find(PORTED).directory) / "TREE_DIGEST").read_text().split()[0]
    assert f"tree digest {recorded[:12]}" in r.stdout
    r = cli("verify", "--target", tree)  # the pin comes from the tree's state: no --pin needed
    assert r.returncode == 0 and f"over {PORTED[:8]}" in r.stdout, r.stdout + r.stderr
    text = (tree / "cosmos_predict2/pipelines/text2image.py").read_text()
    assert "CosmosTextEncoderConfig.NUM_TOKENS, CosmosTextEncoderConfig.EMBED_DIM" in text  # upstream's change kept
    assert ").cuda()" not in text  # ours applied on top
    line = one_error_line(cli("apply", "--pin", pin.default().short, "--target", tree))  # no silent pin switch
    assert f"applied over upstream {PORTED[:8]}, not {pin.default().short}" in line and "revert" in line
    r = cli("digest", "--pin", PORTED[:8], "--from-source", clone, "--check")
    assert r.returncode == 0, r.stdout + r.stderr
    r = cli("revert", "--target", tree)
    assert r.returncode == 0 and f"pristine upstream {PORTED[:8]}" in r.stdout, r.stdout + r.stderr


def test_download_takes_the_revisions_of_the_chosen_pin(tmp_path):
    r = cli("download", "--pin", PORTED[:8], "--model", "t5-11b", "--dry-run", "--checkpoint-dir", tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"revision {pin.find(PORTED).checkpoints['google-t5/t5-11b']}" in r.stdout
    line = one_error_line(cli("download", "--pin", "0000000", "--model", "t5-11b", "--dry-run"))
    assert "no pin '0000000'" in line
