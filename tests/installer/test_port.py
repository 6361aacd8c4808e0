"""`python -m installer port` on a small synthetic upstream built here (no network), and the import/export round
trip on the real series when a local upstream clone is available.

The synthetic upstream: BASE holds five library files; REV changes them so that our five patches hit each case:
clean (a.py), fuzz (a.py, a context line changed), offset (b.py, lines inserted above), conflict (c.py, the same
line changed differently) and drop (d.py, upstream made the same change). REV also adds a "cuda" literal, bumps a
dependency and a checkpoint revision and changes a file the overlay replaces: the drift scan must say so.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from inst_helpers import MIRROR, REPO, cli, one_error_line
from installer import cli as installer_cli
from installer import digest, patch, pin, port
from installer.errors import InstallerError

ENV = {"GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
       "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t", "HOME": os.devnull}
OLD_REV, NEW_REV = "1" * 40, "2" * 40


def g(repo, *args, stdin=None) -> str:
    e = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    e.update(ENV)
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=e,
                          input=stdin).stdout


def lines(tag: str, n: int = 30) -> str:
    return "".join(f"{tag} line {i}\n" for i in range(1, n + 1))


def write(root: Path, files: dict) -> None:
    for p, text in files.items():
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        (root / p).write_text(text)


def edit(root: Path, path: str, old: str, new: str) -> None:
    t = (root / path).read_text()
    assert old in t
    (root / path).write_text(t.replace(old, new, 1))


def commit(repo: Path, subject: str, body: str = "") -> str:
    g(repo, "add", "-A")
    g(repo, "commit", "-q", "-m", subject, *(["-m", body] if body else []))
    return g(repo, "rev-parse", "HEAD").strip()


@pytest.fixture
def world(tmp_path):
    """(upstream clone, REV, patches root with the BASE pin, overlay dir)."""
    up = tmp_path / "upstream"
    up.mkdir()
    g(up, "init", "-q")
    write(up, {"cosmos_predict2/a.py": lines("a"), "cosmos_predict2/b.py": lines("b"),
               "cosmos_predict2/c.py": lines("c"), "cosmos_predict2/d.py": lines("d"), "imaginaire/e.py": lines("e"),
               "scripts/x.py": "print('upstream x')\n", "README.md": "upstream\n",
               "pyproject.toml": '[project]\nname = "p"\nversion = "0.1"\ndependencies = [\n  "dep==1.0",\n]\n',
               "scripts/download_checkpoints.py": f'REV = {{\n    "org/model": "{OLD_REV}",\n}}\n'})
    base = commit(up, "base")
    dev = tmp_path / "dev"  # our changes, one commit each, exported with tools/export_series.py
    g(tmp_path, "clone", "-q", str(up), str(dev))
    edit(dev, "cosmos_predict2/a.py", "a line 5\n", "a line 5 ours\n")
    commit(dev, "clean-change", "Why the clean change.")
    edit(dev, "cosmos_predict2/a.py", "a line 25\n", "a line 25 ours\n")
    commit(dev, "fuzzy-change", "Why the fuzzy change.")
    edit(dev, "cosmos_predict2/b.py", "b line 20\n", "b line 20 ours\n")
    commit(dev, "offset-change", "Why the offset change.")
    edit(dev, "cosmos_predict2/c.py", "c line 10\n", "c line 10 ours\n")
    commit(dev, "conflicting-change", "Why the conflicting change.")
    edit(dev, "cosmos_predict2/d.py", "d line 3\n", "d line 3 fixed\n")
    commit(dev, "upstream-fixes-this-too", "Upstream will make the same fix.")
    root = tmp_path / "patches"
    out = root / base
    r = subprocess.run([os.sys.executable, str(REPO / "tools/export_series.py"), str(dev), base, "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    p = pin.Pin(commit=base, version="0.1", git_url="https://example.invalid/up", manifest="manifest.tsv",
                directory=str(out), default=True, checkpoints={"org/model": OLD_REV})
    (out / "upstream.toml").write_text(p.to_toml())
    # upstream moves on
    edit(up, "cosmos_predict2/a.py", "a line 23\n", "a line 23 upstream\n")  # inside the fuzzy hunk's context
    edit(up, "cosmos_predict2/b.py", "b line 1\n", "b line 0a\nb line 0b\nb line 0c\nb line 1\n")
    edit(up, "cosmos_predict2/c.py", "c line 10\n", "c line 10 upstream\n")
    edit(up, "cosmos_predict2/d.py", "d line 3\n", "d line 3 fixed\n")
    edit(up, "imaginaire/e.py", "e line 30\n", "e line 30\nx = torch.zeros(1).to(\"cuda\")\n")
    edit(up, "scripts/x.py", "upstream x", "upstream x v2")
    edit(up, "pyproject.toml", "dep==1.0", "dep==2.0")
    edit(up, "pyproject.toml", 'version = "0.1"', 'version = "0.2"')
    edit(up, "scripts/download_checkpoints.py", OLD_REV, NEW_REV)
    rev = commit(up, "upstream moves")
    overlay = tmp_path / "overlay"
    write(overlay, {"scripts/x.py": "print('ours')\n", "cosmos_predict2/portable/z.py": "Z = 1\n"})
    return up, rev, root, overlay


def run_port(world, work, *extra):
    up, rev, root, overlay = world
    return cli("port", "--upstream", up, "--to", rev, "--work", work, "--patches-root", root,
               "--overlay-dir", overlay, *extra)


def rows(stdout: str) -> dict:
    out = {}
    for ln in stdout.splitlines():
        cells = [c.strip() for c in ln.split("|")]
        if len(cells) > 3 and cells[1].endswith(".patch"):
            out[cells[1].split("-", 1)[1][:-6]] = cells[2]
    return out


def test_series_round_trips_byte_for_byte_through_commits(world, tmp_path):
    up, rev, root, _ = world
    src = pin.default(str(root))
    names = patch.read_series(src.directory)
    work = tmp_path / "rt"
    work.mkdir()
    port.git(str(work), "init", "-q")
    (work / ".git/objects/info/alternates").write_text(str(up / ".git/objects") + "\n")
    port.git(str(work), "checkout", "-q", "--detach", src.commit)
    commits = port.import_series(str(work), src.commit, src.directory, names)
    assert len(commits) == 5
    again = tmp_path / "again"
    assert port.export_series(str(work), src.commit, str(again), src.commit) == names
    for n in names + ["series"]:
        assert (again / n).read_bytes() == (Path(src.directory) / n).read_bytes(), n
    # a patch not in canonical form is refused with the line that differs
    p = Path(src.directory) / names[0]
    p.write_bytes(p.read_bytes().replace(b"\n\ndiff --git", b"\n\n\ndiff --git", 1))
    work2 = tmp_path / "rt2"
    work2.mkdir()
    port.git(str(work2), "init", "-q")
    (work2 / ".git/objects/info/alternates").write_text(str(up / ".git/objects") + "\n")
    port.git(str(work2), "checkout", "-q", "--detach", src.commit)
    with pytest.raises(port.InstallerError, match="does not round-trip byte for byte"):
        port.import_series(str(work2), src.commit, src.directory, names)


def test_dry_run_prints_the_table_and_writes_nothing(world, tmp_path):
    up, rev, root, _ = world
    before = sorted(os.listdir(root))
    r = run_port(world, tmp_path / "w", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert rows(r.stdout) == {"clean-change": "clean", "fuzzy-change": "fuzz", "offset-change": "offset",
                              "conflicting-change": "conflict", "upstream-fixes-this-too": "drop"}
    assert "upstream moves" in r.stdout  # the upstream commits that touched each patch's files
    assert sorted(os.listdir(root)) == before and not (tmp_path / "w").exists()


def test_conflict_stops_then_continue_exports_the_new_pin(world, tmp_path):
    up, rev, root, overlay = world
    work = tmp_path / "w"
    r = run_port(world, work)
    line = one_error_line(r)
    assert "patch 0004-conflicting-change.patch conflicts" in line and "--continue" in line
    c = work / "cosmos_predict2/c.py"
    assert "<<<<<<<" in c.read_text()
    assert not (root / rev).exists()
    assert "conflict markers remain" in one_error_line(cli("port", "--continue", "--work", work))
    c.write_text(lines("c").replace("c line 10\n", "c line 10 upstream and ours\n"))
    r = cli("port", "--continue", "--work", work)
    assert r.returncode == 0, r.stderr
    assert rows(r.stdout) == {"clean-change": "clean", "fuzzy-change": "fuzz", "offset-change": "offset",
                              "conflicting-change": "conflict", "upstream-fixes-this-too": "drop"}
    assert not work.exists()
    new = root / rev
    names = patch.read_series(str(new))
    assert names == ["0001-clean-change.patch", "0002-fuzzy-change.patch", "0003-offset-change.patch",
                     "0004-conflicting-change.patch"]  # the drop is gone
    # the new series applies with zero offset and zero fuzz (the installer's own engine) to REV
    files = {p: ((up / p).read_bytes(), 0o100644) for p in ("cosmos_predict2/a.py", "cosmos_predict2/b.py",
                                                           "cosmos_predict2/c.py", "cosmos_predict2/d.py")}
    out = patch.apply_series(str(new), dict(files), names)
    assert b"c line 10 upstream and ours\n" in out["cosmos_predict2/c.py"][0]
    assert b"a line 25 ours\n" in out["cosmos_predict2/a.py"][0] and b"b line 20 ours" in out["cosmos_predict2/b.py"][0]
    # the manifest: every file of REV with its git blob SHA-1 and size, library = cosmos_predict2/ and imaginaire/
    listed = {}
    for ln in (new / "manifest.tsv").read_text().splitlines():
        if not ln.startswith("#"):
            mode, sha, size, lib, path = ln.split("\t")
            listed[path] = (sha, int(size), lib)
    tree = g(up, "ls-tree", "-r", "-l", rev).splitlines()
    assert {ln.split("\t")[1]: (ln.split()[2], int(ln.split()[3])) for ln in tree} == \
        {p: v[:2] for p, v in listed.items()}
    assert listed["imaginaire/e.py"][2] == "yes" and listed["scripts/x.py"][2] == "no"
    p = pin.from_file(str(new / "upstream.toml"))
    assert (p.commit, p.version, p.default, p.has_sdist, p.checkpoints) == (rev, "0.2", False, False,
                                                                           {"org/model": NEW_REV})
    # TREE_DIGEST = what apply would produce: REV's library files, the new series, the overlay
    lib = {p: ((up / p).read_bytes(), 0o100644) for p, v in listed.items() if v[2] == "yes"}
    full = patch.apply_series(str(new), lib, names)
    full["scripts/x.py"] = (b"print('ours')\n", 0o100644)
    full["cosmos_predict2/portable/z.py"] = (b"Z = 1\n", 0o100644)
    assert (new / "TREE_DIGEST").read_text().split()[0] == digest.tree_digest(full)
    assert "0004-conflicting-change.patch" in (new / "RESOLUTIONS").read_text()
    report = (new / "PORT_REPORT.md").read_text()
    assert "imaginaire/e.py:31" in report and "cuda" in report
    assert "dependencies: dep==1.0 -> dependencies: dep==2.0" in report
    assert "overlay files replacing upstream files that changed: 1\n  - scripts/x.py" in report
    assert f"org/model: {NEW_REV} (was {OLD_REV})" in report
    # a re-port reuses the hand resolution (same source patch) ...
    r = run_port(world, tmp_path / "w2", "--dry-run")
    assert r.returncode == 0 and "resolved by the recorded resolution" in r.stdout, r.stdout + r.stderr
    # ... but not once the source patch changed
    src = root / g(up, "rev-parse", "HEAD~1").strip() / "0004-conflicting-change.patch"
    src.write_bytes(src.read_bytes().replace(b"Why the conflicting change.", b"Why, changed."))
    r = run_port(world, tmp_path / "w3", "--dry-run")
    assert rows(r.stdout)["conflicting-change"] == "conflict" and "recorded resolution" not in r.stdout


def test_abort_removes_the_work_tree_and_writes_nothing(world, tmp_path):
    up, rev, root, _ = world
    work = tmp_path / "w"
    one_error_line(run_port(world, work))
    assert "a port is already in progress" in one_error_line(run_port(world, work))
    r = cli("port", "--abort", "--work", work)
    assert r.returncode == 0 and not work.exists() and not (root / rev).exists()
    assert "no port in progress" in one_error_line(cli("port", "--continue", "--work", work))


def test_bad_inputs_are_one_line(world, tmp_path):
    up, rev, root, overlay = world
    assert "is not in the clone" in one_error_line(run_port((up, "no-such-rev", root, overlay), tmp_path / "w"))
    assert "not a git repository" in one_error_line(run_port((tmp_path, rev, root, overlay), tmp_path / "w"))
    assert "--upstream and --to are needed" in one_error_line(cli("port", "--work", tmp_path / "w"))



def test_port_errors_go_through_the_one_cli_handler(tmp_path, capsys):
    """port.main has no except chain of its own (it raises); `python -m installer port` prints through
    cli.handled, the handler of every other command: same lines, and Ctrl-C is one line too."""
    with pytest.raises(InstallerError, match="--upstream and --to are needed"):
        port.main(["--work", str(tmp_path / "w")])
    work = tmp_path / "broken"
    (work / ".git").mkdir(parents=True)
    (work / ".git" / port.STATE).write_text("{}")  # a port state without its fields: a bug's line, not a traceback
    assert one_error_line(cli("port", "--continue", "--work", work)) == (
        "error: internal error KeyError: 'next' (port). Rerun with COSMOS_OVERLAY_DEBUG=1 and report the traceback.")

    def interrupted():
        raise KeyboardInterrupt

    assert installer_cli.handled("port", interrupted) == 130
    assert capsys.readouterr().err.splitlines() == [
        "error: interrupted (Ctrl-C) (port). Run 'python -m installer port --abort' to drop what the port left, "
        "then start it again."]

PORT_COMMAND = f"python -m installer port --upstream {MIRROR} --to 661da4774b0ca41d082a0ecbeb47550bcf07e03f"


def test_shipped_661da47_series_is_what_the_port_makes(tmp_path):
    """Re-running the port of the default pin's series (recorded resolutions reused) gives the shipped files."""
    clone = os.environ.get("COSMOS_OVERLAY_UPSTREAM_CLONE") or (str(MIRROR) if MIRROR.is_dir() else None)
    if clone is None:
        pytest.skip("no local upstream clone: set COSMOS_OVERLAY_UPSTREAM_CLONE to a clone or mirror of "
                    "nvidia-cosmos/cosmos-predict2 holding ccb40411 and 661da47")
    target = "661da4774b0ca41d082a0ecbeb47550bcf07e03f"
    root = tmp_path / "patches"
    shutil.copytree(REPO / "patches", root)
    r = cli("port", "--upstream", clone, "--to", target, "--work", tmp_path / "w", "--patches-root", root)
    assert r.returncode == 0, f"re-port failed; run {PORT_COMMAND} and resolve: {r.stdout}{r.stderr}"
    assert "resolved by hand" not in r.stdout
    shipped = REPO / "patches" / target
    made = sorted(os.listdir(root / target))
    assert made == sorted(os.listdir(shipped)), f"stale patches/{target}: run {PORT_COMMAND}"
    for n in made:
        if n != "PORT_REPORT.md":  # its detail column says which resolutions were reused
            assert (root / target / n).read_bytes() == (shipped / n).read_bytes(), \
                f"patches/{target}/{n} is stale: run {PORT_COMMAND}"


def test_canonicalize_rewrites_a_git_diff_made_patch_so_the_port_accepts_it(world, tmp_path):
    """A patch made as COMMON.md says (plain `git diff`: abbreviated blob ids) is not canonical: the port refuses
    it with the command that fixes it; --canonicalize rewrites only what differs, the tree stays the same."""
    up, rev, root, overlay = world
    src = pin.default(str(root))
    p = Path(src.directory) / "0001-clean-change.patch"
    canonical = p.read_bytes()
    short = re.sub(rb"^index ([0-9a-f]{7})[0-9a-f]{33}\.\.([0-9a-f]{7})[0-9a-f]{33}", rb"index \1..\2", canonical,
                    flags=re.M)
    assert short != canonical
    p.write_bytes(short)
    line = one_error_line(run_port(world, tmp_path / "w"))
    assert "0001-clean-change.patch does not round-trip" in line and "--canonicalize" in line
    assert not (tmp_path / "w").exists()  # no half-made work directory blocks the retry
    r = cli("port", "--upstream", up, "--canonicalize", "--patches-root", root)
    assert r.returncode == 0 and "1 of 5 patches rewritten" in r.stdout, r.stdout + r.stderr
    assert p.read_bytes() == canonical
    assert run_port(world, tmp_path / "w", "--dry-run").returncode == 0
