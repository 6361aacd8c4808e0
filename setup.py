"""cosmos-predict2-overlay: the installer package is imported as `cosmos_predict2_overlay` (never as a top-level
`installer`, which would clobber PyPI's pypa `installer`). patches/ and overlay/ (train.sh included) are copied into
cosmos_predict2_overlay/_data at build time; the code prefers a checkout's copies when it runs from one."""

import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
PKG = "cosmos_predict2_overlay"


def _version() -> str:
    with open(os.path.join(HERE, "installer", "__init__.py"), encoding="utf-8") as f:
        for line in f:
            if line.startswith("__version__"):
                return line.split("=", 1)[1].strip().strip("\"'")
    raise RuntimeError("no __version__ in installer/__init__.py")


class BuildWithData(build_py):
    """Ship the series and the overlay inside the package."""

    def run(self):
        super().run()
        dest = os.path.join(self.build_lib, PKG, "_data")
        if os.path.isdir(dest):
            shutil.rmtree(dest)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo")
        for name in ("patches", "overlay"):
            shutil.copytree(os.path.join(HERE, name), os.path.join(dest, name), ignore=ignore)


setup(
    name="cosmos-predict2-overlay",
    version=_version(),
    description="Patch overlay that makes nvidia-cosmos/cosmos-predict2 train on Ascend NPU, CUDA without "
                "TransformerEngine, and CPU",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=[PKG],
    package_dir={PKG: "installer"},
    # Tested ranges (CI: GitPython 3.1.45, unidiff 0.7.5, huggingface_hub 0.35.3; tests/download/test_fresh_venv.py
    # installs the wheel into a new venv, which resolves the newest release inside these ranges). huggingface_hub 1.x
    # moved from requests to httpx; download.py needs neither directly. 2.x is untested, so excluded.
    install_requires=["GitPython>=3.1.30,<4", "unidiff>=0.7.5,<0.8", "huggingface_hub>=0.30,<2"],
    entry_points={"console_scripts": [f"cosmos-predict2-overlay = {PKG}.cli:main"]},
    cmdclass={"build_py": BuildWithData},
)
