"""What says how a result was made: the machine, the package versions and the git commit.

Written into a run's ``config.json`` and into a comparison's run records, so that a number can be traced back
to the code and the machine that produced it."""

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# The packages whose versions change what a run computes, or how fast.
PACKAGES = ("distilbert-eqx", "jax", "jaxlib", "equinox", "optax", "numpy", "tokenizers", "transformers")


def machine() -> str:
    """The CPU's model name with its family and model numbers (Linux), else what `platform` knows."""
    try:
        fields = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            fields.setdefault(name.strip(), value)  # the first CPU's
        name = fields["model name"].strip()
        family, model = fields.get("cpu family", "?").strip(), fields.get("model", "?").strip()
        return f"{name} (family {family} model {model}), {os.cpu_count()} cores"
    except (OSError, KeyError):
        return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def git_commit() -> str | None:
    """The commit of the checkout the package runs from (``+dirty`` with uncommitted changes to tracked
    files); None for an installed copy outside git, or without git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=PACKAGE_DIR, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            cwd=PACKAGE_DIR,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{commit}+dirty" if dirty else commit


def package_versions() -> dict[str, str | None]:
    """The installed version of each of `PACKAGES` (None where one is not installed), and Python's."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions
