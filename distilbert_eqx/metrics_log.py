"""``metrics.jsonl``, one JSON object per record, and optionally the same records in Weights & Biases.

The record names (``step``, ``loss``, ``loss_ce``, ``loss_kl``, ``loss_cos``, ``grad_norm``, ``lr``,
``examples_per_sec``, ``val_accuracy``, ``val_loss``, ``summary/...``) are a user-facing format: scripts read
them. ``loss`` and each ``loss_<term>`` are means over the steps since the previous train record (Trainer's
``loss``), ``grad_norm`` the last step's; every record carries ``time``, when it was written (UTC, ISO 8601).

Human lines (`say`) go to stderr, beside the progress bar, so that a script's stdout holds only its JSON
result.
"""

import datetime
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tqdm import tqdm


class MetricsLog:
    """Appends records to ``path``; a process that does not write (``enabled=False``) logs nothing.

    Arguments:
        path: the ``metrics.jsonl`` file, or ``None`` for none. The records are also kept in ``records``.
        enabled: whether this process writes (process 0 of several).
        wandb_settings: ``wandb.init`` keyword arguments (project, name, group, config), or ``None`` for no
            Weights & Biases run.
    """

    def __init__(
        self, path: Path | None, *, enabled: bool = True, wandb_settings: Mapping[str, Any] | None = None
    ):
        self.path, self.enabled, self.wandb_settings, self.wandb = path, enabled, wandb_settings, None
        self.records: list[dict[str, Any]] = []

    def start(self, *, append: bool) -> None:
        """Begin the run's log: empty the file unless ``append`` (a resumed run), and start wandb if asked."""
        if not self.enabled:
            return
        if not append and self.path is not None:
            self.path.write_text("")
        if self.wandb_settings is not None:
            try:
                import wandb
            except ImportError as e:
                raise RuntimeError("use_wandb is true but wandb is not installed: pip install wandb") from e
            self.wandb = wandb.init(**self.wandb_settings)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {**record, "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")}
        self.records.append(record)
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            values = {k: v for k, v in record.items() if k not in ("step", "time")}
            self.wandb.log(values, step=record["step"])

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


def say(message: str) -> None:
    """Print a line for the person running the script: on stderr, above the progress bar if one is drawn."""
    tqdm.write(message, file=sys.stderr)
