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

from inst_helpers import MIRROR, REPO, cli, edit_as_user, one_error_line, sdist_members, snapshot
from installer import pin

PIN = pin.default().commit

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
    errors = "overlay/cosmos_predict2/portable/user_error.py"  # the one user-error type (installer/errors.py)
    (tmp_path / errors).parent.mkdir(parents=True)
    shutil.copy(REPO / errors, tmp_path / errors)
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


# ---- issue 15: data loss, hostile input, one error contract ------------------------------------------------------

def _state(tree):
    import json
    return json.loads((tree / ".cosmos-overlay/state.json").read_text())


def _edit_everything(tree):
    """User edits of every kind in an applied tree: a patched file, an overlay module (0600), train.sh as a
    symlink, and an upstream library file the overlay never touched."""
    st = _state(tree)
    patched = st["backups"][0]
    ours = edit_as_user(tree, st, patched, "../my-launcher.sh")
    untouched = next(p for p in st["managed"] if p not in st["files"])
    with open(tree / untouched, "ab") as f:
        f.write(b"# mine too\n")
    return {p: ((tree / p).read_bytes() if not os.path.islink(tree / p) else os.readlink(tree / p),
                os.lstat(tree / p).st_mode) for p in (patched, ours, "train.sh", untouched)}


def test_force_backs_up_edits_and_revert_restores_them_exactly(tmp_path, pristine, upstream_sdist):
    """Defects 2 and 3: apply --force keeps the user's version of every file it overwrites (bytes, mode,
    symlinks as symlinks), says where, and revert puts each back exactly."""
    tree = copy_tree(pristine, tmp_path / "t")
    assert cli("apply", "--target", tree).returncode == 0
    mine = _edit_everything(tree)
    r = cli("apply", "--force", "--source", upstream_sdist, "--target", tree)
    assert r.returncode == 0, r.stderr
    assert f"backed up your version of {len(mine)} file(s)" in r.stdout and ".cosmos-overlay/edits" in r.stdout
    for p in mine:
        assert p in r.stdout
        saved = tree / ".cosmos-overlay/edits" / p
        got = os.readlink(saved) if os.path.islink(saved) else saved.read_bytes()
        assert (got, os.lstat(saved).st_mode) == mine[p], p
    assert cli("verify", "--target", tree).returncode == 0  # the tree itself is the series again
    r = cli("revert", "--target", tree)
    assert r.returncode == 0 and f"put back your version of {len(mine)} file(s)" in r.stdout, r.stdout + r.stderr
    for p, (data, mode) in mine.items():
        full = tree / p
        assert os.lstat(full).st_mode == mode, (p, oct(os.lstat(full).st_mode), oct(mode))
        assert (os.readlink(full) if os.path.islink(full) else full.read_bytes()) == data, p
    assert not (tree / ".cosmos-overlay").exists()


def test_foreign_symlink_and_private_file_come_back_as_they_were(tmp_path, pristine):
    """Defect 3: files in the way that --force moves aside keep being a symlink / keep mode 0600."""
    tree = copy_tree(pristine, tmp_path / "t")
    os.symlink("/usr/bin/env", tree / "train.sh")
    ours = "cosmos_predict2/portable/__init__.py"
    (tree / ours).parent.mkdir(parents=True, exist_ok=True)
    (tree / ours).write_bytes(b"secret = 1\n")
    os.chmod(tree / ours, 0o600)
    r = cli("apply", "--force", "--target", tree)
    assert r.returncode == 0 and "backed up 2 file(s) of yours" in r.stdout, r.stdout + r.stderr
    assert cli("revert", "--target", tree).returncode == 0
    assert os.path.islink(tree / "train.sh") and os.readlink(tree / "train.sh") == "/usr/bin/env"
    assert (tree / ours).read_bytes() == b"secret = 1\n" and os.stat(tree / ours).st_mode & 0o7777 == 0o600


def test_missing_state_never_deletes_backups_nor_exits_0(tmp_path, pristine):
    """Defect 6b: without state.json, revert/apply/status refuse and the backups stay."""
    tree = copy_tree(pristine, tmp_path / "t")
    assert cli("apply", "--target", tree).returncode == 0
    (tree / ".cosmos-overlay/state.json").unlink()
    before = snapshot(tree)
    for cmd in ("revert", "apply", "status"):
        line = one_error_line(cli(cmd, "--target", tree))
        assert "state.json is missing but" in line and "backup file(s) remain" in line, line
        assert snapshot(tree) == before
    # and with the backups gone as well, a patched tree is still not "nothing to revert"
    shutil.rmtree(tree / ".cosmos-overlay")
    line = one_error_line(cli("revert", "--target", tree))
    assert "nothing to revert: no installer state" in line and "not pristine" in line


def test_unreadable_state_never_deletes_anything(tmp_path, pristine):
    tree = copy_tree(pristine, tmp_path / "t")
    assert cli("apply", "--target", tree).returncode == 0
    (tree / ".cosmos-overlay/state.json").write_text("{ not json")
    before = snapshot(tree)
    for cmd in ("revert", "apply", "status", "recover"):
        assert "unreadable installer state" in one_error_line(cli(cmd, "--target", tree))
        assert snapshot(tree) == before


@pytest.mark.parametrize("key,bad", [("created", "../victim/file.txt"), ("created", "/tmp/x"),
                                     ("created", "a/./b.py"), ("created", ".git/config"),
                                     ("deleted", "../victim/file.txt"), ("backups", "not/upstream.py"),
                                     ("user_backups", "../victim/file.txt")])
def test_planted_state_paths_are_refused_before_any_deletion(tmp_path, pristine, key, bad):
    """Defect 6a: every path of the state must be a normalised path inside the tree (and upstream ones upstream)."""
    import json
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "file.txt").write_text("precious")
    tree = copy_tree(pristine, tmp_path / "t")
    assert cli("apply", "--target", tree).returncode == 0
    st = _state(tree)
    if key == "user_backups":
        st[key][bad] = 0o100644
    else:
        st[key].append(bad)
    (tree / ".cosmos-overlay/state.json").write_text(json.dumps(st))
    before = snapshot(tree)
    for cmd in (("revert",), ("revert", "--force"), ("apply", "--force")):
        line = one_error_line(cli(*cmd, "--target", tree))
        assert "installer state is invalid" in line and "nothing was changed" in line.lower(), line
        assert snapshot(tree) == before
    assert (victim / "file.txt").read_text() == "precious"


def test_planted_journal_is_refused(tmp_path, pristine):
    import json
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "file.txt").write_text("precious")
    tree = copy_tree(pristine, tmp_path / "t")
    (tree / ".cosmos-overlay/txn").mkdir(parents=True)
    (tree / ".cosmos-overlay/txn/journal.json").write_text(json.dumps(
        {"what": "apply", "new_dirs": ["../victim"], "prune": [],
         "ops": [{"path": "../victim/file.txt", "had_old": False}]}))
    for cmd in ("recover", "revert", "apply"):
        assert "journal of an interrupted operation" in one_error_line(cli(cmd, "--target", tree))
    assert (victim / "file.txt").read_text() == "precious"


def test_clone_config_cannot_run_commands(tmp_path, sdist_clone):
    """Defect 4: core.fsmonitor (and hooks) of a --source clone never run."""
    clone = copy_tree(sdist_clone, tmp_path / "c")
    pwned = tmp_path / "PWNED"
    hook = tmp_path / "hook.sh"
    hook.write_text(f"#!/bin/sh\ntouch {pwned}\n")
    hook.chmod(0o755)
    git(clone, "config", "core.fsmonitor", str(hook))
    git(clone, "config", "core.hooksPath", str(tmp_path))
    (tmp_path / "post-checkout").symlink_to(hook)
    git(clone, "config", "diff.external", str(hook))
    os.utime(clone / SAMPLE)  # a stat-dirty file: git would consult fsmonitor and re-hash it
    line = one_error_line(cli("apply", "--source", clone, "--target", tmp_path / "t"))
    assert "not the pinned" in line
    assert not pwned.exists()
    with open(clone / SAMPLE, "ab") as f:
        f.write(b"# local change\n")
    assert f"uncommitted changes in {SAMPLE}" in one_error_line(cli("apply", "--source", clone, "--target",
                                                                    tmp_path / "t"))
    assert not pwned.exists()


def _sparse_bomb(path: Path, name: str, size: int) -> Path:
    """A GNU sparse member that declares `size` bytes (all hole) in a ~200-byte .tar.gz."""
    import gzip
    ti = tarfile.TarInfo(f"cosmos_predict2-1.0.9/{name}")
    ti.type, ti.size = tarfile.GNUTYPE_SPARSE, 1
    buf = bytearray(ti.tobuf(format=tarfile.GNU_FORMAT))
    buf[386:398] = tarfile.itn(size - 1, 12, tarfile.GNU_FORMAT)  # one data byte at the very end
    buf[398:410] = tarfile.itn(1, 12, tarfile.GNU_FORMAT)
    buf[483:495] = tarfile.itn(size, 12, tarfile.GNU_FORMAT)
    buf[148:156] = b" " * 8
    buf[148:156] = b"%06o\0 " % sum(buf[:512])
    path.write_bytes(gzip.compress(bytes(buf[:512]) + b"x" + b"\0" * 511 + b"\0" * 1024))
    return path


def test_archive_bomb_is_refused_before_reading(tmp_path):
    """Defect 5: a 64 GiB sparse member is refused from its header; memory is capped at 1 GiB to prove it."""
    import resource
    bomb = _sparse_bomb(tmp_path / "cosmos_predict2-1.0.9.tar.gz", SAMPLE, 64 << 30)
    assert bomb.stat().st_size < 400

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    e = {**os.environ, "COSMOS_OVERLAY_DEBUG": ""}
    r = subprocess.run([sys.executable, "-m", "installer", "apply", "--source", str(bomb), "--target",
                        str(tmp_path / "t")], cwd=REPO, env=e, capture_output=True, text=True, timeout=120,
                       preexec_fn=cap)
    line = one_error_line(r)
    assert f"archive member {SAMPLE} declares {64 << 30} bytes" in line, line
    assert not (tmp_path / "t").exists()


def test_unknown_archive_member_is_refused(tmp_path):
    bad = make_tar(tmp_path / "cosmos_predict2-1.0.9.tar.gz", {"big.bin": b"\0" * 100})
    assert "archive member big.bin is not a file of cosmos-predict2 1.0.9" in one_error_line(
        cli("apply", "--source", bad, "--target", tmp_path / "t"))


def test_credentials_in_git_url_are_redacted(tmp_path):
    """Defect 7: a token in COSMOS_OVERLAY_GIT_URL never reaches a message."""
    env = {"COSMOS_OVERLAY_CACHE": str(tmp_path / "cache"),
           "COSMOS_OVERLAY_GIT_URL": "https://someone:s3cr3t-t0ken@127.0.0.1:9/x.git?token=s3cr3t2"}
    r = cli("apply", "--source", "git", "--target", tmp_path / "t", env=env)
    line = one_error_line(r)
    assert "cannot clone https://***@127.0.0.1:9/x.git?token=***" in line, line
    assert "s3cr3t" not in r.stdout + r.stderr


def test_redact_url():
    from installer.errors import InstallerError, redact_url
    assert (redact_url("https://u:p@hf-mirror.example/api?x=1&token=abc#f")
            == "https://***@hf-mirror.example/api?x=1&token=***#f")
    assert (redact_url("see http://tok@host and ssh://git@github.com/x")
            == "see http://***@host and ssh://***@github.com/x")
    assert redact_url("https://huggingface.co") == "https://huggingface.co"
    assert "pw" not in str(InstallerError("x https://a:pw@h", "https://a:pw@h", "https://a:pw@h"))
    import importlib.util  # download.py (loaded as a plain file, as its tests do) names HF_ENDPOINT through it
    spec = importlib.util.spec_from_file_location("dl_plain", REPO / "installer" / "download.py")
    dl = sys.modules["dl_plain"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dl)
    assert dl._redact_url("https://u:hf_secret@mirror.example") == "https://***@mirror.example"
    assert "_redact_url(constants.ENDPOINT)" in (REPO / "installer" / "download.py").read_text()


@pytest.mark.parametrize("where", ["overlay/cosmos_predict2/t", "patches", ".", "installer/x"])
def test_target_inside_the_checkout_is_refused(where):
    """Defect 8: a target under overlay/ (or anywhere in this checkout but ./cosmos-predict2) is refused."""
    target = REPO / where
    existed = target.exists()
    for cmd in ("apply", "revert"):
        line = one_error_line(cli(cmd, "--target", target, "--source", "/nonexistent") if cmd == "apply"
                              else cli(cmd, "--target", target))
        assert "the overlay's own files" in line and "outside this checkout" in line, line
    assert target.exists() == existed


def test_default_target_in_the_checkout_is_allowed(upstream_sdist):
    r = cli("apply", "--dry-run", "--source", upstream_sdist)  # ./cosmos-predict2 from the checkout root
    assert r.returncode == 0 and "dry run" in r.stdout, r.stderr


@pytest.mark.parametrize("kind", ["empty", "text", "corrupt", "truncated"])
def test_broken_source_file_one_line(tmp_path, upstream_sdist, kind):
    """Defect 10: an empty, non-gzip, corrupt or truncated source file is one line naming it."""
    data = upstream_sdist.read_bytes()
    f = tmp_path / "cosmos_predict2-1.0.9.tar.gz"
    f.write_bytes({"empty": b"", "text": b"hello\n", "corrupt": data[:3000] + b"\xff" * 100 + data[3100:],
                   "truncated": data[:5000]}[kind])
    line = one_error_line(cli("apply", "--source", f, "--target", tmp_path / "t"))
    want = {"empty": "source file is empty", "text": "not a .tar.gz archive",
            "corrupt": "cannot read the sdist archive (corrupt or truncated)",
            "truncated": "cannot read the sdist archive (corrupt or truncated)"}[kind]
    assert want in line and str(f) in line, line
    assert not (tmp_path / "t").exists()


def test_empty_git_cache_directory_is_recloned(tmp_path, sdist_clone):
    """Defect 10: an empty (or half-written) cache clone is made again instead of failing on every retry."""
    cache = tmp_path / "cache"
    (cache / "cosmos-predict2.git").mkdir(parents=True)
    env = {"COSMOS_OVERLAY_CACHE": str(cache), "COSMOS_OVERLAY_GIT_URL": f"file://{sdist_clone}"}
    for _ in range(2):
        line = one_error_line(cli("apply", "--source", "git", "--target", tmp_path / "t", env=env))
        assert f"git repository lacks the pinned commit {PIN[:12]}" in line, line
    assert (cache / "cosmos-predict2.git" / "HEAD").is_file()
    assert not [p for p in cache.iterdir() if ".tmp-" in p.name]


def test_clone_owned_by_another_user_one_line(tmp_path, sdist_clone):
    """Defect 10: git's dubious-ownership refusal becomes one line with the safe.directory advice."""
    if os.geteuid() != 0:
        pytest.skip("needs root to give the clone to another user")
    clone = copy_tree(sdist_clone, tmp_path / "c")
    subprocess.run(["chown", "-R", "nobody", str(clone)], check=True)
    line = one_error_line(cli("apply", "--source", clone, "--target", tmp_path / "t", env={"HOME": str(tmp_path)}))
    assert "owned by another user (dubious ownership)" in line and "safe.directory" in line, line


def test_verify_advice_is_a_command_that_exists(tmp_path, pristine):
    """Defect 10: when pristine backups are gone verify says what to run (it has no --source itself)."""
    tree = copy_tree(pristine, tmp_path / "t")
    assert cli("apply", "--target", tree).returncode == 0
    st = _state(tree)
    untouched = next(p for p in st["managed"] if p not in st["files"])
    with open(tree / untouched, "ab") as f:  # an edit of a file apply did not change: its pristine bytes are gone
        f.write(b"# edit\n")
    st["managed"].remove(untouched)  # so that drift does not report it first
    import json
    (tree / ".cosmos-overlay/state.json").write_text(json.dumps(st))
    line = one_error_line(cli("verify", "--target", tree))
    assert "pristine bytes of" in line and "apply --force --source pypi" in line, line
    assert "Pass --source" not in line


KILL_AT_NTH_REMOVAL = r"""
import os, runpy, signal, sys
n, count = int(os.environ["KILL_AT_REMOVAL"]), [0]
def wrap(fn):
    def inner(*a, **k):
        r = fn(*a, **k)
        count[0] += 1
        if count[0] == n:
            os.kill(os.getpid(), getattr(signal, os.environ.get("SIGNAL", "SIGKILL")))
        return r
    return inner
os.unlink, os.remove, os.rmdir = wrap(os.unlink), wrap(os.remove), wrap(os.rmdir)
if os.environ.get("LISTING") == "marker-first":  # a directory order some ext4 hash seeds give: marker, old/, ...
    key = lambda name: (name not in ("DONE", "COMMITTED"), [-ord(c) for c in name])
    scandir, listdir = os.scandir, os.listdir
    class _Entries:
        def __init__(self, items): self._it = iter(items)
        def __iter__(self): return self
        def __next__(self): return next(self._it)
        def __enter__(self): return self
        def __exit__(self, *a): return False
        def close(self): pass
    os.scandir = lambda *a: _Entries(sorted(scandir(*a), key=lambda e: key(e.name)))
    os.listdir = lambda *a: sorted(listdir(*a), key=key)
sys.argv = ["installer"] + sys.argv[1:]
runpy.run_module("installer", run_name="__main__")
"""


@pytest.mark.parametrize("listing", ["natural", "marker-first"])
def test_kill_during_cleanup_after_commit_rolls_forward(tmp_path, pristine, listing):
    """Defect 1a, independent of the installer's own hooks: SIGKILL at the k-th file removal of an apply on a
    pristine tree (all removals happen in the clean-up after the commit), under this file system's directory
    order and under one that lists the commit marker first, must leave the applied tree after recovery, never a
    mixed one that claims to be rolled back."""
    ref = copy_tree(pristine, tmp_path / "ref")
    assert cli("apply", "--target", ref).returncode == 0
    applied = {p: v for p, v in snapshot(ref).items() if p != ".cosmos-overlay/state.json"}
    for k in range(1, 30, 3):
        tree = copy_tree(pristine, tmp_path / f"k{k}")
        r = subprocess.run([sys.executable, "-c", KILL_AT_NTH_REMOVAL, "apply", "--target", str(tree)], cwd=REPO,
                           env={**os.environ, "KILL_AT_REMOVAL": str(k), "LISTING": listing},
                           capture_output=True, text=True)
        if r.returncode == 0:
            break  # fewer removals than k: the clean-up finished
        assert r.returncode == -signal.SIGKILL, r.stderr
        r = cli("apply", "--target", tree)
        assert r.returncode == 0, (k, r.stdout, r.stderr)
        got = {p: v for p, v in snapshot(tree).items() if p != ".cosmos-overlay/state.json"}
        assert got == applied, (k, sorted(set(got) ^ set(applied))[:5])
        shutil.rmtree(tree)


def test_sigint_during_revert_leaves_no_skeleton(tmp_path, pristine):
    """Defect 1b: a Ctrl-C at the k-th file removal of revert (hook-free, as in the test above): the revert is
    complete when the command exits, with no empty portable/, scripts/ or .cosmos-overlay/ left behind."""
    before = snapshot(pristine)
    for k in range(1, 120, 9):
        tree = copy_tree(pristine, tmp_path / f"k{k}")
        assert cli("apply", "--target", tree).returncode == 0
        r = subprocess.run([sys.executable, "-c", KILL_AT_NTH_REMOVAL, "revert", "--target", str(tree)], cwd=REPO,
                           env={**os.environ, "KILL_AT_REMOVAL": str(k), "SIGNAL": "SIGINT"},
                           capture_output=True, text=True)
        if r.returncode == 0:
            break  # fewer removals than k
        assert r.returncode == 130 and "interrupted (Ctrl-C)" in one_error_line(r), (k, r.stderr)
        assert snapshot(tree) == before, (k, sorted(set(snapshot(tree)) ^ set(before))[:5])
        shutil.rmtree(tree)


def test_archive_inflating_past_any_sdist_is_refused(tmp_path):
    """Defect 5, second form: a few MB of gzip inflating to gigabytes (here inside a pax header, which tarfile
    itself would read into memory) stops at the inflate bound, under a 1 GiB memory cap."""
    import gzip
    import resource
    import zlib
    bomb = tmp_path / "cosmos_predict2-1.0.9.tar.gz"
    ti = tarfile.TarInfo("cosmos_predict2-1.0.9/././@PaxHeader")
    ti.type, ti.size = tarfile.XHDTYPE, 3 << 30
    header = ti.tobuf(format=tarfile.USTAR_FORMAT)
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    with open(bomb, "wb") as f:
        f.write(z.compress(header))
        chunk = b"0" * (1 << 20)
        for _ in range(3 << 10):
            f.write(z.compress(chunk))
        f.write(z.flush())
    assert bomb.stat().st_size < 8 << 20
    assert len(gzip.open(bomb).read(1 << 10)) == 1 << 10

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    r = subprocess.run([sys.executable, "-m", "installer", "apply", "--source", str(bomb), "--target",
                        str(tmp_path / "t")], cwd=REPO, capture_output=True, text=True, timeout=300, preexec_fn=cap)
    line = one_error_line(r)
    assert "inflates to more than any cosmos-predict2 sdist can" in line, line
