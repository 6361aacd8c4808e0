"""Fixtures shared by the installer tests."""

from __future__ import annotations

import pytest

from inst_helpers import cli


@pytest.fixture(scope="session")
def pristine(upstream_sdist, tmp_path_factory):
    """A pristine upstream tree (apply + revert) to copy from; never changed in place."""
    tree = tmp_path_factory.mktemp("pristine") / "t"
    assert cli("apply", "--source", upstream_sdist, "--target", tree).returncode == 0
    assert cli("revert", "--target", tree).returncode == 0
    return tree
