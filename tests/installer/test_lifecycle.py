"""apply / status / verify / revert / digest on the REAL upstream sdist with this checkout's series and overlay."""

from __future__ import annotations

import hashlib
import json
import os
import shutil


from inst_helpers import REPO, cli, one_error_line, sdist_members, snapshot
from installer import manifest, pin

PIN = pin.default().commit

PATCHES = REPO / "patches" / PIN


def upstream_tree(sdist) -> dict:
    """The files apply must leave after revert: manifest files of the sdist (PKG-INFO is not upstream git)."""
    return {p: d for p, d in sdist_members(sdist).items() if p in manifest.load()}


def files_of(root) -> dict:
    return {p.rstrip("/"): v[0] for p, v in snapshot(root).items() if not p.endswith("/")}


def test_applied_tree_is_verified(applied_tree):
    r = cli("verify", "--target", applied_tree)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok: ")
    r = cli("status", "--target", applied_tree)
    assert r.returncode == 0 and r.stdout.startswith("applied (series "), r.stdout + r.stderr
    assert os.access(applied_tree / "train.sh", os.X_OK)


def test_overlay_and_patches_present(applied_tree, upstream_sdist):
    ours = [p.relative_to(REPO / "overlay").as_posix() for p in (REPO / "overlay").rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]
    for p in ours:
        assert (applied_tree / p).read_bytes() == (REPO / "overlay" / p).read_bytes(), p
    assert "train.sh" in ours  # the launcher is an overlay file: installed at the tree root like the others
    st = json.loads((applied_tree / ".cosmos-overlay/state.json").read_text())
    up = upstream_tree(upstream_sdist)
    for p in st["backups"]:  # every changed upstream file is backed up with its pristine bytes
        assert (applied_tree / ".cosmos-overlay/pristine" / p).read_bytes() == up[p]
    series = [ln.split("#")[0].strip() for ln in (PATCHES / "series").read_text().splitlines()]
    assert st["series"] == [s for s in series if s]
    assert st["commit"] == PIN


def test_full_cycle_restores_upstream_bytes(tmp_path, upstream_sdist):
    tree = tmp_path / "t"
    assert cli("apply", "--source", upstream_sdist, "--target", tree).returncode == 0
    r = cli("apply", "--source", upstream_sdist, "--target", tree)
    assert r.returncode == 0 and r.stdout.startswith("already applied (series "), r.stdout
    (tree / "my_notes.txt").write_text("mine")
    import py_compile  # bytecode of our modules, as running training leaves it: revert removes it with them
    st = json.loads((tree / ".cosmos-overlay/state.json").read_text())
    for p in st["created"]:
        if p.endswith(".py"):
            py_compile.compile(str(tree / p), doraise=True)
    r = cli("revert", "--target", tree)
    assert r.returncode == 0, r.stderr
    assert "my_notes.txt" in r.stdout  # user files are left and listed
    (tree / "my_notes.txt").unlink()
    assert files_of(tree) == upstream_tree(upstream_sdist)  # byte-equal, nothing extra (no state dir, no overlay)
    assert not any(p.endswith("/") and not os.listdir(tree / p) for p in snapshot(tree)), "empty dirs left"
    r = cli("status", "--target", tree)
    assert r.returncode == 0 and r.stdout.startswith("pristine upstream"), r.stdout
    # apply in place over a pristine tree (no download needed) gives the same digest as a fresh apply
    assert cli("apply", "--source", "/nonexistent", "--target", tree).returncode == 0
    d1 = cli("digest", "--target", tree).stdout.strip()
    d2 = cli("digest", "--from-source", upstream_sdist).stdout.strip()
    assert len(d1) == 64 and d1 == d2


def test_dry_run_writes_nothing(tmp_path, upstream_sdist):
    tree = tmp_path / "t"
    r = cli("apply", "--dry-run", "--source", upstream_sdist, "--target", tree)
    assert r.returncode == 0 and "dry run" in r.stdout
    assert not tree.exists()


def test_tree_digest_matches_recorded(upstream_sdist):
    """Reproducibility: the real sdist + this series must give patches/<commit>/TREE_DIGEST."""
    assert (PATCHES / "TREE_DIGEST").exists(), "record it: python -m installer digest --from-source pypi --write"
    r = cli("digest", "--from-source", upstream_sdist, "--check")
    assert r.returncode == 0, r.stdout + r.stderr


def test_digest_check_detects_difference(tmp_path, upstream_sdist):
    pd = tmp_path / "p"
    shutil.copytree(PATCHES, pd)
    (pd / "TREE_DIGEST").write_text("0" * 64 + "\n")
    r = cli("digest", "--from-source", upstream_sdist, "--check", "--patches-dir", pd)
    assert r.returncode == 1
    assert one_error_line(r).startswith("error: tree digest ")
    r = cli("digest", "--from-source", upstream_sdist, "--write", "--patches-dir", pd)
    assert r.returncode == 0
    assert cli("digest", "--from-source", upstream_sdist, "--check", "--patches-dir", pd).returncode == 0


def test_digest_is_content_addressed(tmp_path, upstream_sdist):
    """Changing one overlay byte changes the digest; the same inputs give the same digest."""
    ov = tmp_path / "ov"
    shutil.copytree(REPO / "overlay", ov, ignore=shutil.ignore_patterns("__pycache__"))
    a = cli("digest", "--from-source", upstream_sdist, "--overlay-dir", ov).stdout
    assert a == cli("digest", "--from-source", upstream_sdist, "--overlay-dir", ov).stdout
    f = next(p for p in ov.rglob("*.py"))
    f.write_bytes(f.read_bytes() + b"#")
    assert cli("digest", "--from-source", upstream_sdist, "--overlay-dir", ov).stdout != a


def copy_resources(tmp_path):
    pd, ov = tmp_path / "patches", tmp_path / "overlay"
    shutil.copytree(PATCHES, pd)
    shutil.copytree(REPO / "overlay", ov, ignore=shutil.ignore_patterns("__pycache__"))
    return pd, ov


def test_upgrade_after_series_change(tmp_path, upstream_sdist):
    pd, ov = copy_resources(tmp_path)
    tree = tmp_path / "t"
    res = ("--patches-dir", pd, "--overlay-dir", ov)
    assert cli("apply", "--source", upstream_sdist, "--target", tree, *res).returncode == 0
    # new version of this repo: one overlay file added, the last patch dropped
    (ov / "cosmos_predict2" / "portable" / "added_later.py").write_text("X = 1\n")
    names = [ln for ln in (pd / "series").read_text().splitlines() if ln and not ln.startswith("#")]
    dropped = names[-1]
    (pd / "series").write_text("\n".join(names[:-1]) + "\n")
    r = cli("status", "--target", tree, *res)
    assert "run apply to upgrade" in r.stdout
    r = cli("verify", "--target", tree, *res)
    assert r.returncode == 1 and "run apply to upgrade" in one_error_line(r).lower()
    r = cli("apply", "--target", tree, *res)
    assert r.returncode == 0 and r.stdout.startswith("upgraded to series"), r.stdout + r.stderr
    assert cli("verify", "--target", tree, *res).returncode == 0
    # the files only the dropped patch changed are pristine again
    from installer.patch import parse_patch
    only_dropped = {fp.path for fp in parse_patch(str(pd / dropped))}
    for n in names[:-1]:
        only_dropped -= {fp.path for fp in parse_patch(str(pd / n))}
    up = upstream_tree(upstream_sdist)
    for p in only_dropped:
        assert (tree / p).read_bytes() == up[p], p
    # and a full revert still restores upstream
    assert cli("revert", "--target", tree, *res).returncode == 0
    assert files_of(tree) == up


def test_user_edit_refused_on_reapply_and_revert(tmp_path, upstream_sdist):
    pd, ov = copy_resources(tmp_path)
    tree = tmp_path / "t"
    res = ("--patches-dir", pd, "--overlay-dir", ov)
    assert cli("apply", "--source", upstream_sdist, "--target", tree, *res).returncode == 0
    st = json.loads((tree / ".cosmos-overlay/state.json").read_text())
    patched = st["backups"][0]
    with open(tree / patched, "ab") as f:
        f.write(b"# my local tweak\n")
    r = cli("status", "--target", tree, *res)
    assert r.returncode == 1 and r.stdout.startswith("drifted:") and patched in r.stdout
    (ov / "cosmos_predict2" / "portable" / "added_later.py").write_text("X = 1\n")  # an upgrade is pending
    before = snapshot(tree)
    for cmd in (("apply",), ("revert",)):
        r = cli(*cmd, "--target", tree, *res)
        line = one_error_line(r)
        assert "user edits in installer-managed files" in line and patched in line and "--force" in line
        assert snapshot(tree) == before
    r = cli("verify", "--target", tree, *res)
    assert patched in one_error_line(r)
    assert cli("apply", "--force", "--target", tree, *res).returncode == 0
    assert cli("verify", "--target", tree, *res).returncode == 0


def test_foreign_file_in_the_way(tmp_path, upstream_sdist):
    """A pristine upstream tree where the user already has their own train.sh: named, kept, backed up with --force."""
    tree = tmp_path / "t"
    assert cli("apply", "--source", upstream_sdist, "--target", tree).returncode == 0
    assert cli("revert", "--target", tree).returncode == 0
    (tree / "train.sh").write_text("my own launcher\n")
    before = snapshot(tree)
    r = cli("apply", "--target", tree)
    line = one_error_line(r)
    assert "would overwrite train.sh" in line and "--force" in line
    assert snapshot(tree) == before
    assert cli("apply", "--force", "--target", tree).returncode == 0
    assert (tree / "train.sh").read_bytes() == (REPO / "overlay" / "train.sh").read_bytes()
    assert cli("revert", "--target", tree).returncode == 0
    assert (tree / "train.sh").read_text() == "my own launcher\n"


def test_state_records_what_was_written(applied_tree):
    st = json.loads((applied_tree / ".cosmos-overlay/state.json").read_text())
    assert st["source"]["kind"] == "pypi" and st["source"]["identity"] == pin.default().sdist_sha256
    for p, rec in st["files"].items():
        assert hashlib.sha256((applied_tree / p).read_bytes()).hexdigest() == rec["sha256"]
    assert "train.sh" in st["created"] and "train.sh" in st["managed"]
    assert not any(p.startswith(".cosmos-overlay") for p in st["managed"])


def test_revert_force_keeps_and_names_edits_of_untouched_files(tmp_path, upstream_sdist):
    tree = tmp_path / "t"
    assert cli("apply", "--source", upstream_sdist, "--target", tree).returncode == 0
    st = json.loads((tree / ".cosmos-overlay/state.json").read_text())
    untouched = next(p for p in st["managed"] if p not in st["files"])
    with open(tree / untouched, "ab") as f:
        f.write(b"# mine\n")
    assert untouched in one_error_line(cli("revert", "--target", tree))
    r = cli("revert", "--force", "--target", tree)
    assert r.returncode == 0 and "still carry your edits" in r.stdout and untouched in r.stdout
    up = upstream_tree(upstream_sdist)
    for p in st["backups"]:
        assert (tree / p).read_bytes() == up[p]


def test_upgrade_gives_back_a_forced_over_user_file(tmp_path, upstream_sdist):
    pd, ov = copy_resources(tmp_path)
    res = ("--patches-dir", pd, "--overlay-dir", ov)
    tree = tmp_path / "t"
    assert cli("apply", "--source", upstream_sdist, "--target", tree, *res).returncode == 0
    assert cli("revert", "--target", tree, *res).returncode == 0
    (ov / "extra.py").write_text("ours = True\n")
    (tree / "extra.py").write_text("mine = True\n")
    assert "would overwrite extra.py" in one_error_line(cli("apply", "--target", tree, *res))
    assert cli("apply", "--force", "--target", tree, *res).returncode == 0
    assert (tree / "extra.py").read_text() == "ours = True\n"
    (ov / "extra.py").unlink()  # the next version stops shipping it
    assert cli("apply", "--target", tree, *res).returncode == 0
    assert (tree / "extra.py").read_text() == "mine = True\n"
    assert cli("verify", "--target", tree, *res).returncode == 0
    assert cli("revert", "--target", tree, *res).returncode == 0
    assert (tree / "extra.py").read_text() == "mine = True\n"
