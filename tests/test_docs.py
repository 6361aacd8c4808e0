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
