"""The strict patch engine on crafted diffs (no upstream needed)."""

from __future__ import annotations

import random
import subprocess

import pytest

from installer.patch import PatchError, apply_series, parse_patch, read_series, split_lines


def write_series(tmp_path, *patches: bytes, series_extra: str = "") -> str:
    d = tmp_path / "series"
    d.mkdir()
    names = []
    for i, p in enumerate(patches, 1):
        name = f"{i:04d}-p.patch"
        (d / name).write_bytes(p)
        names.append(name)
    (d / "series").write_text("# comment\n\n" + series_extra + "\n".join(names) + "\n")
    return str(d)


HEADER = b"Why: a header of free text.\n\nIt explains the change.\n\n"


def modify_patch(path: str, body: bytes) -> bytes:
    return HEADER + (f"diff --git a/{path} b/{path}\nindex 1111111..2222222 100644\n--- a/{path}\n+++ b/{path}\n"
                     .encode()) + body


BASE = b"".join(b"line %d\n" % i for i in range(1, 21))
TWO_HUNKS = b"""@@ -2,3 +2,3 @@
 line 2
-line 3
+LINE 3
 line 4
@@ -15,3 +15,4 @@
 line 15
 line 16
+inserted
 line 17
"""


def test_exact_hunks_apply(tmp_path):
    d = write_series(tmp_path, modify_patch("a.txt", TWO_HUNKS))
    out = apply_series(d, {"a.txt": (BASE, 0o100644)})
    want = BASE.replace(b"line 3\n", b"LINE 3\n").replace(b"line 16\n", b"line 16\ninserted\n")
    assert out["a.txt"] == (want, 0o100644)


def test_fuzz_refused(tmp_path):
    base = BASE.replace(b"line 4\n", b"line four\n")  # one context line differs
    d = write_series(tmp_path, modify_patch("a.txt", TWO_HUNKS))
    with pytest.raises(PatchError, match=r"0001-p.patch does not apply: a.txt hunk #1 at line 2 does not match"):
        apply_series(d, {"a.txt": (base, 0o100644)})


def test_offset_refused(tmp_path):
    base = b"extra\nextra\n" + BASE  # the same context exists two lines further down
    d = write_series(tmp_path, modify_patch("a.txt", TWO_HUNKS))
    with pytest.raises(PatchError, match=r"hunk #1 at line 2 does not match; its context is at line 4 "
                                         r"\(offset \+2 refused\)"):
        apply_series(d, {"a.txt": (base, 0o100644)})


def test_second_hunk_failure_named(tmp_path):
    base = BASE.replace(b"line 16\n", b"line sixteen\n")
    d = write_series(tmp_path, modify_patch("a.txt", TWO_HUNKS))
    with pytest.raises(PatchError, match=r"a.txt hunk #2 at line 15"):
        apply_series(d, {"a.txt": (base, 0o100644)})


def test_input_not_modified_on_failure(tmp_path):
    good = modify_patch("a.txt", TWO_HUNKS)
    bad = modify_patch("b.txt", b"@@ -1 +1 @@\n-nope\n+yes\n")
    d = write_series(tmp_path, good, bad)
    files = {"a.txt": (BASE, 0o100644), "b.txt": (b"other\n", 0o100644)}
    before = dict(files)
    with pytest.raises(PatchError, match="0002-p.patch"):
        apply_series(d, files)
    assert files == before


def test_new_file_with_mode(tmp_path):
    p = HEADER + b"""diff --git a/tools/run.sh b/tools/run.sh
new file mode 100755
index 0000000..1111111
--- /dev/null
+++ b/tools/run.sh
@@ -0,0 +1,2 @@
+#!/bin/sh
+echo hi
"""
    out = apply_series(write_series(tmp_path, p), {})
    assert out["tools/run.sh"] == (b"#!/bin/sh\necho hi\n", 0o100755)
    with pytest.raises(PatchError, match="creates tools/run.sh, which already exists"):
        apply_series(str(tmp_path / "series"), {"tools/run.sh": (b"x\n", 0o100644)})


def test_empty_new_file(tmp_path):
    p = HEADER + b"diff --git a/pkg/__init__.py b/pkg/__init__.py\nnew file mode 100644\nindex 0000000..e69de29\n"
    assert apply_series(write_series(tmp_path, p), {}) == {"pkg/__init__.py": (b"", 0o100644)}


def test_deleted_file(tmp_path):
    p = HEADER + b"""diff --git a/old.py b/old.py
deleted file mode 100644
index 1111111..0000000
--- a/old.py
+++ /dev/null
@@ -1,2 +0,0 @@
-a
-b
"""
    d = write_series(tmp_path, p)
    assert apply_series(d, {"old.py": (b"a\nb\n", 0o100644), "k": (b"", 0o100644)}) == {"k": (b"", 0o100644)}
    with pytest.raises(PatchError, match="deletes old.py but its content differs"):
        apply_series(d, {"old.py": (b"a\nb\nc\n", 0o100644)})
    with pytest.raises(PatchError, match="does not exist"):
        apply_series(d, {})


def test_mode_change(tmp_path):
    p = HEADER + b"diff --git a/s.sh b/s.sh\nold mode 100644\nnew mode 100755\n"
    d = write_series(tmp_path, p)
    assert apply_series(d, {"s.sh": (b"x\n", 0o100644)}) == {"s.sh": (b"x\n", 0o100755)}
    with pytest.raises(PatchError, match="expects mode 100644"):
        apply_series(d, {"s.sh": (b"x\n", 0o100755)})


def test_crlf_preserved_byte_exact(tmp_path):
    base = b"one\r\ntwo\r\nthree\r\n"
    p = modify_patch("w.txt", b"@@ -1,3 +1,3 @@\n one\r\n-two\r\n+TWO\r\n three\r\n")
    out = apply_series(write_series(tmp_path, p), {"w.txt": (base, 0o100644)})
    assert out["w.txt"][0] == b"one\r\nTWO\r\nthree\r\n"
    # an LF-only patch does not match CRLF lines: refused, never "normalised"
    lf = modify_patch("w.txt", b"@@ -1,3 +1,3 @@\n one\n-two\n+TWO\n three\n")
    (tmp_path / "lf").mkdir()
    with pytest.raises(PatchError, match="hunk #1"):
        apply_series(write_series(tmp_path / "lf", lf), {"w.txt": (base, 0o100644)})


def test_no_newline_at_end(tmp_path):
    p = modify_patch("n.txt", b"@@ -1,2 +1,2 @@\n a\n-b\n\\ No newline at end of file\n+c\n")
    out = apply_series(write_series(tmp_path, p), {"n.txt": (b"a\nb", 0o100644)})
    assert out["n.txt"][0] == b"a\nc\n"


def test_binary_refused(tmp_path):
    p = HEADER + b"diff --git a/x.bin b/x.bin\nindex 1..2 100644\nGIT binary patch\nliteral 3\nKcmZ?wYX$%Q00000\n\n"
    with pytest.raises(PatchError, match="binary patch refused for x.bin"):
        apply_series(write_series(tmp_path, p), {"x.bin": (b"abc", 0o100644)})
    p2 = HEADER + b"diff --git a/y.bin b/y.bin\nindex 1..2 100644\nBinary files a/y.bin and b/y.bin differ\n"
    (tmp_path / "b").mkdir()
    with pytest.raises(PatchError, match="binary patch refused"):
        apply_series(write_series(tmp_path / "b", p2), {"y.bin": (b"abc", 0o100644)})


@pytest.mark.parametrize("path", ["../evil.py", "a/../../evil.py", ".cosmos-overlay/state.json", ".git/config"])
def test_paths_outside_tree_refused(tmp_path, path):
    p = HEADER + (f"--- /dev/null\n+++ b/{path}\n@@ -0,0 +1 @@\n+x\n").encode()
    with pytest.raises(PatchError, match="escapes the tree or touches reserved files"):
        apply_series(write_series(tmp_path, p), {})


def test_absolute_path_refused(tmp_path):
    p = HEADER + b"--- /dev/null\n+++ /etc/evil\n@@ -0,0 +1 @@\n+x\n"
    with pytest.raises(PatchError, match="escapes the tree"):
        apply_series(write_series(tmp_path, p), {})


def test_rename_refused(tmp_path):
    p = HEADER + b"diff --git a/a.py b/b.py\nsimilarity index 100%\nrename from a.py\nrename to b.py\n"
    with pytest.raises(PatchError, match="rename/copy refused"):
        apply_series(write_series(tmp_path, p), {"a.py": (b"", 0o100644)})


def test_series_names_missing_patch(tmp_path):
    d = write_series(tmp_path, modify_patch("a.txt", TWO_HUNKS), series_extra="0009-gone.patch\n")
    with pytest.raises(PatchError, match="series line 3 names a missing patch '0009-gone.patch'"):
        read_series(d)


def test_header_free_text_with_dashes(tmp_path):
    p = b"Subject line\n\nA paragraph.\n---\nMore notes after a dash line.\n\n" + modify_patch("a.txt", TWO_HUNKS)
    out = apply_series(write_series(tmp_path, p), {"a.txt": (BASE, 0o100644)})
    assert b"LINE 3" in out["a.txt"][0]


def test_split_lines_keeps_cr():
    assert split_lines(b"a\r\nb\rc\nd") == [b"a\r\n", b"b\rc\n", b"d"]


def test_agrees_with_git_apply_on_random_edits(tmp_path):
    """Cross-check against git itself: diffs made by `git diff` must give git's bytes, CRLF and missing EOL included."""
    rng = random.Random(7)
    for case in range(12):
        lines = [f"row {i} {rng.random():.6f}" + ("\r\n" if rng.random() < 0.3 else "\n") for i in range(60)]
        old = "".join(lines).encode()
        new_lines = list(lines)
        for _ in range(rng.randint(1, 6)):
            i = rng.randrange(len(new_lines))
            op = rng.choice("dim")
            if op == "d":
                del new_lines[i]
            elif op == "i":
                new_lines.insert(i, f"new {rng.random():.4f}\n")
            else:
                new_lines[i] = f"mod {rng.random():.4f}\r\n"
        new = "".join(new_lines).encode()
        if case % 3 == 0:
            new = new.rstrip(b"\r\n")  # no newline at end of file
        work = tmp_path / f"c{case}"
        work.mkdir()
        git = ["git", "-c", "core.autocrlf=false", "-c", "core.safecrlf=false"]
        subprocess.run(git + ["init", "-q"], cwd=work, check=True)
        (work / "f.txt").write_bytes(old)
        subprocess.run(git + ["add", "f.txt"], cwd=work, check=True)
        (work / "f.txt").write_bytes(new)
        diff = subprocess.run(git + ["diff", "--no-color", "-U3"], cwd=work, capture_output=True, check=True).stdout
        assert diff, "git produced no diff"
        series = work / "s"
        series.mkdir()
        (series / "x.patch").write_bytes(HEADER + diff)
        (series / "series").write_text("x.patch\n")
        out = apply_series(str(series), {"f.txt": (old, 0o100644)})
        assert out["f.txt"][0] == new, f"case {case}"


def test_parse_reports_counts(tmp_path):
    d = write_series(tmp_path, modify_patch("a.txt", TWO_HUNKS))
    (fp,) = parse_patch(f"{d}/0001-p.patch")
    assert (fp.path, fp.kind, [h.number for h in fp.hunks]) == ("a.txt", "modify", [1, 2])
