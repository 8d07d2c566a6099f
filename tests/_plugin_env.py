"""A throw-away Python environment, without network, to install a plugin distribution into.

The environment is a ``venv`` without pip that sees this interpreter's site-packages
(torch, kdbench's editable install, pytest) through a ``.pth`` file, so installing a
plugin there never touches the environment the tests run in. Packages are installed
with this interpreter's pip (``pip --python``), offline and without build isolation.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import pytest

#: What a subprocess must not inherit: it would change which plugins or results it sees.
_SCRUBBED = ("PYTHONPATH", "KDBENCH_DISABLE_PLUGINS", "KDBENCH_RESULTS", "KDBENCH_DATA")


@dataclass(frozen=True)
class PluginEnv:
    """A temporary environment: ``python`` is its interpreter."""

    root: Path
    python: Path

    def install(self, package: Path) -> None:
        """Install the distribution whose source is ``package`` (copy it first: setuptools builds in-tree)."""
        command = [sys.executable, "-m", "pip", "--python", str(self.python), "install", "--no-index"]
        command += ["--no-build-isolation", "--no-deps", "--disable-pip-version-check", "--quiet", str(package)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False, env=_env())
        assert result.returncode == 0, f"pip install {package} failed:\n{result.stdout}\n{result.stderr}"

    def run(self, *args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run ``python ARGS`` in the environment (one torch thread) and return the finished process."""
        return subprocess.run(
            [str(self.python), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, check=False, env=_env()
        )

    def kdbench(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
        """Run the ``kdbench`` command line of the environment and return the finished process."""
        return self.run("-m", "kdbench.cli", *args, cwd=cwd)


def _env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in _SCRUBBED}
    env["OMP_NUM_THREADS"] = "1"
    return env


def make_plugin_env(root: Path) -> PluginEnv:
    """Create a temporary environment under ``root`` that sees this interpreter's packages; skip without pip."""
    if importlib.util.find_spec("pip") is None:
        pytest.skip("pip is not available in this interpreter, so no plugin can be installed into a temporary env")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    python = root / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    # addsitedir (not a plain path line) so that the .pth files there run too: kdbench's editable finder.
    ours = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    lines = "".join(f"import site; site.addsitedir({path!r})\n" for path in ours)
    (Path(purelib) / "_kdbench_tests_parent_env.pth").write_text(lines, encoding="utf-8")
    return PluginEnv(root, python)


def copy_source(package: Path, destination: Path) -> Path:
    """Return a clean copy of a package's source tree at ``destination`` (no build leftovers)."""
    ignore = shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__", ".pytest_cache")
    return Path(shutil.copytree(package, destination, ignore=ignore))
