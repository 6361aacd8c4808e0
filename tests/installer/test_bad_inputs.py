"""Every bad input: one clear error line, exit != 0, nothing changed on disk. Real sdist bytes throughout."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from inst_helpers import REPO, cli, one_error_line, sdist_members, snapshot
from installer.manifest import PIN

MIRROR = Path(os.environ.get("COSMOS_OVERLAY_TEST_MIRROR", "/work/.mirror/nvidia-cosmos+cosmos-predict2/repo"))
SAMPLE = "cosmos_predict2/models/video2world_model.py"
SAFE = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python < 3.10.12 has no filters


def make_tar(path: Path, members: dict, top="cosmos_predict2-1.0.9", extra=()):
    with tarfile.open(path, "w:gz") as t:
        for name, data in members.items():
            ti = tarfile.TarInfo(f"{top}/{name}")
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
        for ti in extra:
            t.addfile(ti, io.BytesIO(b"x") if ti.isfile() else None)
    return path


@pytest.fixture(scope="module")
def pristine(upstream_sdist, tmp_path_factory):
    """A pristine upstream tree (apply + revert) to copy from."""
    tree = tmp_path_factory.mktemp("pristine") / "t"
    assert cli("apply", "--source", upstream_sdist, "--target", tree).returncode == 0
    assert cli("revert", "--target", tree).returncode == 0
    return tree


def copy_tree(src, dst):
    shutil.copytree(src, dst, symlinks=True)
    return dst


# ---- target -----------------------------------------------------------------------------------------------------

def test_target_not_upstream(tmp_path, upstream_sdist):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "hello.txt").write_text("hi")
    before = snapshot(tmp_path / "t")
    line = one_error_line(cli("apply", "--source", upstream_sdist, "--target", tmp_path / "t"))
    assert "target directory exists and is not a cosmos-predict2 tree" in line and str(tmp_path / "t") in line
    assert snapshot(tmp_path / "t") == before


def test_target_upstream_with_changed_file(tmp_path, pristine):
    tree = copy_tree(pristine, tmp_path / "t")
    with open(tree / SAMPLE, "ab") as f:
        f.write(b"\n")
    before = snapshot(tree)
    line = one_error_line(cli("apply", "--target", tree))
    assert f"target is not pristine cosmos-predict2@{PIN[:8]}: {SAMPLE} is missing or changed" in line
    assert snapshot(tree) == before


def test_target_is_a_file(tmp_path):
    (tmp_path / "f").write_text("")
    assert "target is a file" in one_error_line(cli("apply", "--target", tmp_path / "f"))


# ---- sdist ------------------------------------------------------------------------------------------------------

def test_sdist_one_modified_byte_names_the_file(tmp_path, upstream_sdist):
    members = sdist_members(upstream_sdist)
    data = bytearray(members[SAMPLE])
    data[100] ^= 0x01
    members[SAMPLE] = bytes(data)
    bad = make_tar(tmp_path / "cosmos_predict2-1.0.9.tar.gz", members)
    line = one_error_line(cli("apply", "--source", bad, "--target", tmp_path / "t"))
    assert f"sdist file {SAMPLE} differs from upstream" in line and "expected b9aa0ebe361dd8aa" in line
    assert not (tmp_path / "t").exists()


def test_sdist_other_version(tmp_path, upstream_sdist):
    bad = make_tar(tmp_path / "cosmos_predict2-1.0.8.tar.gz", sdist_members(upstream_sdist),
                   top="cosmos_predict2-1.0.8")
    line = one_error_line(cli("apply", "--source", bad, "--target", tmp_path / "t"))
    assert "sdist is cosmos-predict2 1.0.8, not 1.0.9" in line and "cosmos_predict2-1.0.9.tar.gz" in line
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("kind", ["escape", "symlink", "hardlink"])
def test_sdist_unsafe_members_refused(tmp_path, kind):
    if kind == "escape":
        ti = tarfile.TarInfo("cosmos_predict2-1.0.9/../../evil.py")
        ti.size = 1
    else:
        ti = tarfile.TarInfo("cosmos_predict2-1.0.9/cosmos_predict2/link.py")
        ti.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
        ti.linkname = "/etc/passwd"
    bad = make_tar(tmp_path / "x.tar.gz", {}, extra=[ti])
    line = one_error_line(cli("apply", "--source", bad, "--target", tmp_path / "t"))
    assert ("escapes the root" if kind == "escape" else "link or special file") in line
    assert not (tmp_path / "t").exists() and not (tmp_path / "evil.py").exists()


def test_unpacked_sdist_directory_is_a_source(tmp_path, upstream_sdist):
    with tarfile.open(upstream_sdist) as t:
        t.extractall(tmp_path / "x", **SAFE)
    src = tmp_path / "x" / "cosmos_predict2-1.0.9"
    assert cli("apply", "--source", src, "--target", tmp_path / "t").returncode == 0
    (src / SAMPLE).write_bytes((src / SAMPLE).read_bytes() + b" ")
    line = one_error_line(cli("apply", "--source", src, "--target", tmp_path / "t2"))
    assert f"{SAMPLE} differs from upstream commit" in line


def test_no_source_reachable(tmp_path):
    env = {"COSMOS_OVERLAY_CACHE": str(tmp_path / "cache"), "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
           "PIP_EXTRA_INDEX_URL": "", "PIP_FIND_LINKS": "", "PIP_RETRIES": "0", "PIP_TIMEOUT": "2",
           "PIP_CONFIG_FILE": os.devnull, "COSMOS_OVERLAY_GIT_URL": f"file://{tmp_path}/no-such-repo"}
    line = one_error_line(cli("apply", "--target", tmp_path / "t", env=env))
    assert "cannot download cosmos-predict2==1.0.9 from PyPI" in line and "--source /path/to/" in line
    line = one_error_line(cli("apply", "--source", "git", "--target", tmp_path / "t", env=env))
    assert "cannot clone" in line and "--source /path/to/" in line
    assert not (tmp_path / "t").exists()


# ---- git --------------------------------------------------------------------------------------------------------

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}


def git(cwd, *args):
    return subprocess.run(["git", "-c", "init.defaultBranch=main", *args], cwd=cwd, check=True,
                          capture_output=True, text=True, env={**os.environ, **GIT_ENV}).stdout.strip()


@pytest.fixture(scope="module")
def sdist_clone(upstream_sdist, tmp_path_factory):
    """A git repo holding the sdist's library bytes: its commit can never be the pinned one."""
    root = tmp_path_factory.mktemp("clone") / "repo"
    with tarfile.open(upstream_sdist) as t:
        t.extractall(root.parent, **SAFE)
    (root.parent / "cosmos_predict2-1.0.9").rename(root)
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "sdist bytes")
    return root


def test_clone_at_other_commit_refused(tmp_path, sdist_clone):
    head = git(sdist_clone, "rev-parse", "HEAD")
    line = one_error_line(cli("apply", "--source", sdist_clone, "--target", tmp_path / "t"))
    assert f"git clone is at commit {head[:12]}, not the pinned {PIN[:12]}" in line and f"checkout {PIN}" in line
    assert not (tmp_path / "t").exists()


def test_dirty_clone_refused(tmp_path, sdist_clone):
    clone = copy_tree(sdist_clone, tmp_path / "c")
    with open(clone / SAMPLE, "ab") as f:
        f.write(b"# local change\n")
    line = one_error_line(cli("apply", "--source", clone, "--target", tmp_path / "t"))
    assert f"git clone has uncommitted changes in {SAMPLE}" in line
    assert not (tmp_path / "t").exists()


def test_git_clone_path_checks_the_pin(tmp_path, sdist_clone):
    """--source git clones (here from a file:// URL standing in for GitHub) and still insists on the pinned commit."""
    env = {"COSMOS_OVERLAY_CACHE": str(tmp_path / "cache"), "COSMOS_OVERLAY_GIT_URL": f"file://{sdist_clone}"}
    line = one_error_line(cli("apply", "--source", "git", "--target", tmp_path / "t", env=env))
    assert f"git repository lacks the pinned commit {PIN[:12]}" in line and "cosmos-predict2.git" in line
    assert (tmp_path / "cache" / "cosmos-predict2.git").is_dir() and not (tmp_path / "t").exists()


def test_bare_repo_without_pin_refused(tmp_path, sdist_clone):
    git(tmp_path, "clone", "-q", "--bare", str(sdist_clone), "b.git")
    line = one_error_line(cli("apply", "--source", tmp_path / "b.git", "--target", tmp_path / "t"))
    assert f"git repository lacks the pinned commit {PIN[:12]}" in line


def test_git_mirror_of_pinned_commit(tmp_path, upstream_sdist):
    """The real upstream history: git-only files come along, scripts/train.py is replaced and restored."""
    if not (MIRROR / "objects").is_dir():
        pytest.skip(f"no bare upstream mirror at {MIRROR} (set COSMOS_OVERLAY_TEST_MIRROR)")
    tree = tmp_path / "t"
    r = cli("apply", "--source", MIRROR, "--target", tree)
    assert r.returncode == 0, r.stderr
    orig = subprocess.run(["git", f"--git-dir={MIRROR}", "show", f"{PIN}:scripts/train.py"], check=True,
                          capture_output=True).stdout
    assert "git-only media file(s) not materialised" in r.stdout and (tree / "assets").is_dir()
    assert (tree / "README.md").is_file()  # git-only files come along (verified against the manifest)
    assert (tree / "scripts/train.py").read_bytes() == (REPO / "overlay/scripts/train.py").read_bytes()
    assert cli("verify", "--target", tree).returncode == 0
    # same managed tree as the sdist gives
    assert cli("digest", "--target", tree).stdout == cli("digest", "--from-source", upstream_sdist).stdout
    assert cli("revert", "--target", tree).returncode == 0
    assert (tree / "scripts/train.py").read_bytes() == orig


# ---- series -----------------------------------------------------------------------------------------------------

def test_patch_no_longer_applies(tmp_path, upstream_sdist):
    pd = tmp_path / "p"
    shutil.copytree(REPO / "patches" / PIN, pd)
    (pd / "9999-stale.patch").write_text(
        "A stale patch.\n\n"
        f"diff --git a/{SAMPLE} b/{SAMPLE}\n--- a/{SAMPLE}\n+++ b/{SAMPLE}\n"
        "@@ -3,2 +3,2 @@\n-this line is not upstream\n+replacement\n context\n")
    with open(pd / "series", "a") as f:
        f.write("9999-stale.patch\n")
    line = one_error_line(cli("apply", "--source", upstream_sdist, "--target", tmp_path / "t", "--patches-dir", pd))
    assert f"patch 9999-stale.patch does not apply: {SAMPLE} hunk #1 at line 3 does not match" in line
    assert not (tmp_path / "t").exists()


# ---- failures while writing -------------------------------------------------------------------------------------

def test_disk_full_mid_apply_fresh_target(tmp_path, upstream_sdist):
    r = cli("apply", "--source", upstream_sdist, "--target", tmp_path / "t", env={"COSMOS_OVERLAY_TEST_FAIL_AT": "40"})
    line = one_error_line(r)
    assert "cannot write the tree: No space left on device" in line and "nothing was changed" in line
    assert not (tmp_path / "t").exists()


def test_disk_full_mid_apply_in_place(tmp_path, pristine):
    tree = copy_tree(pristine, tmp_path / "t")
    before = snapshot(tree)
    r = cli("apply", "--target", tree, env={"COSMOS_OVERLAY_TEST_FAIL_AT": "7"})
    assert "No space left on device" in one_error_line(r)
    assert snapshot(tree) == before


def test_permission_denied_mid_apply(tmp_path, pristine):
    """A read-only directory makes a rename fail midway: rolled back, one line. As root, run as 'nobody' (root
    ignores directory permissions)."""
    tree = copy_tree(pristine, tmp_path / "t")
    demote = None
    if os.geteuid() == 0:
        for dirpath, dirs, names in os.walk(tmp_path):
            for n in [*dirs, *names, ""]:
                os.chown(os.path.join(dirpath, n), 65534, 65534)
        os.chmod(tmp_path, 0o755)

        def demote():
            os.setgid(65534)
            os.setuid(65534)
    ro = tree / "cosmos_predict2" / "models"
    before = snapshot(tree)
    os.chmod(ro, 0o555)
    try:
        r = subprocess.run([sys.executable, "-m", "installer", "apply", "--target", str(tree)], cwd=REPO,
                           capture_output=True, text=True, preexec_fn=demote)
    except PermissionError as e:
        pytest.skip(f"user 'nobody' cannot run this Python ({e}); the ENOSPC hook test covers the roll-back")
    finally:
        os.chmod(ro, 0o755)
    if r.returncode != 0 and "Permission denied" not in r.stderr and demote is not None:
        pytest.skip(f"cannot run the installer as nobody here: {r.stderr.strip()[:200]}")
    line = one_error_line(r)
    assert "cannot write the tree: Permission denied" in line and "nothing was changed" in line
    assert snapshot(tree) == before


def test_kill_during_apply_then_apply_recovers(tmp_path, pristine):
    tree = copy_tree(pristine, tmp_path / "t")
    before = snapshot(tree)
    r = cli("apply", "--target", tree, env={"COSMOS_OVERLAY_TEST_KILL_AT": "12"})
    assert r.returncode == -signal.SIGKILL
    r = cli("status", "--target", tree)
    assert r.returncode == 1 and r.stdout.startswith("interrupted"), r.stdout
    assert "interrupted" in one_error_line(cli("verify", "--target", tree))
    r = cli("apply", "--target", tree)
    assert r.returncode == 0 and "rolled back an interrupted apply" in r.stdout, r.stdout + r.stderr
    assert cli("verify", "--target", tree).returncode == 0
    assert cli("revert", "--target", tree).returncode == 0
    assert snapshot(tree) == before


def test_kill_during_apply_then_revert_recovers(tmp_path, pristine):
    tree = copy_tree(pristine, tmp_path / "t")
    before = snapshot(tree)
    assert cli("apply", "--target", tree, env={"COSMOS_OVERLAY_TEST_KILL_AT": "3"}).returncode == -signal.SIGKILL
    r = cli("revert", "--target", tree)
    assert r.returncode == 0 and "rolled back" in r.stdout and "nothing to revert" in r.stdout
    assert snapshot(tree) == before


def test_kill_during_revert_then_revert_recovers(tmp_path, pristine):
    tree = copy_tree(pristine, tmp_path / "t")
    before = snapshot(tree)
    assert cli("apply", "--target", tree).returncode == 0
    applied = snapshot(tree)
    assert cli("revert", "--target", tree, env={"COSMOS_OVERLAY_TEST_KILL_AT": "5"}).returncode == -signal.SIGKILL
    assert cli("status", "--target", tree).stdout.startswith("interrupted")
    r = cli("status", "--target", tree)
    assert r.returncode == 1
    assert cli("revert", "--target", tree).returncode == 0
    assert snapshot(tree) == before
    assert applied != before


def test_kill_on_fresh_target_leaves_nothing_claimed(tmp_path, upstream_sdist):
    tree = tmp_path / "t"
    r = cli("apply", "--source", upstream_sdist, "--target", tree, env={"COSMOS_OVERLAY_TEST_KILL_AT": "100"})
    assert r.returncode == -signal.SIGKILL
    assert cli("status", "--target", tree).stdout.startswith("interrupted")
    r = cli("apply", "--source", upstream_sdist, "--target", tree)
    assert r.returncode == 0 and "rolled back" in r.stdout, r.stdout + r.stderr
    assert cli("verify", "--target", tree).returncode == 0


# ---- command line -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [("frobnicate",), ("apply", "--no-such-flag"), ("status", "--target")])
def test_usage_errors_one_line_exit_2(args):
    r = cli(*args)
    assert r.returncode == 2
    one_error_line(r)


def test_status_and_verify_on_missing_target(tmp_path):
    for cmd in ("status", "verify", "revert"):
        assert "target directory does not exist" in one_error_line(cli(cmd, "--target", tmp_path / "nope"))


def test_verify_on_pristine_tree(pristine):
    assert "no overlay is applied" in one_error_line(cli("verify", "--target", pristine))


def test_download_without_module_is_one_line(tmp_path):
    pkg = tmp_path / "installer"
    shutil.copytree(REPO / "installer", pkg, ignore=shutil.ignore_patterns("__pycache__", "download.py"))
    r = subprocess.run([sys.executable, "-m", "installer", "download", "--model", "t5-11b"], cwd=tmp_path,
                       capture_output=True, text=True)
    assert "download command is unavailable" in one_error_line(r)
    assert r.returncode == 1


def test_download_dispatch(tmp_path):
    r = cli("download", "--help")
    assert r.returncode == 0 and "--model" in r.stdout


def test_concurrent_command_refused(tmp_path, pristine):
    import fcntl

    tree = copy_tree(pristine, tmp_path / "t")
    before = snapshot(tree)
    fd = os.open(tree, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a running apply holds it
        for cmd in ("apply", "revert"):
            assert "another installer command is running" in one_error_line(cli(cmd, "--target", tree))
    finally:
        os.close(fd)
    assert snapshot(tree) == before


def test_symlinked_directory_leading_out_is_refused(tmp_path, pristine):
    tree = copy_tree(pristine, tmp_path / "t")
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, tree / "cosmos_predict2" / "portable")
    before = snapshot(tree)
    line = one_error_line(cli("apply", "--target", tree))
    assert "outside the tree through a symlink" in line
    assert snapshot(tree) == before and not any(outside.iterdir())


def test_dry_run_on_interrupted_tree(tmp_path, pristine):
    tree = copy_tree(pristine, tmp_path / "t")
    assert cli("apply", "--target", tree, env={"COSMOS_OVERLAY_TEST_KILL_AT": "2"}).returncode == -signal.SIGKILL
    snap = snapshot(tree)
    assert "interrupted" in one_error_line(cli("apply", "--dry-run", "--target", tree))
    assert snapshot(tree) == snap


def test_directory_in_the_way(tmp_path, pristine):
    tree = copy_tree(pristine, tmp_path / "t")
    (tree / "train.sh").mkdir()
    (tree / "train.sh" / "keep.txt").write_text("precious")
    before = snapshot(tree)
    assert "would overwrite train.sh" in one_error_line(cli("apply", "--target", tree))
    assert "a directory is in the way of file train.sh" in one_error_line(cli("apply", "--force", "--target", tree))
    assert snapshot(tree) == before
