"""Whether the Hugging Face hub can be reached, decided at once.

Without a network the hub clients retry for most of a minute before they fail (``transformers`` takes 46 s
to give up on a tokenizer); a run that names a hub id where it meant a local folder should hear so at once,
with the key to change.
"""

import os
import socket
import urllib.parse
from pathlib import Path

_PROXIES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
_TRUE = ("1", "ON", "YES", "TRUE")


def is_hub_id(name: str) -> bool:
    """``name`` can only mean a hub id (``owner/name`` or ``name``), not a local path."""
    return not (Path(name).exists() or name.startswith((".", "/", "~")) or name.count("/") > 1)


def offline() -> bool:
    """``HF_HUB_OFFLINE`` is set: the hub clients read their cache and nothing else."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE


def unreachable(timeout: float = 5.0) -> str | None:
    """Why the hub cannot be reached (``HF_HUB_OFFLINE``, or no connection to its endpoint within ``timeout``
    seconds), or ``None`` when it can. Behind a proxy only the hub client knows the way: nothing is probed."""
    if offline():
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(name) for name in _PROXIES):
        return None
    from huggingface_hub import constants

    url = urllib.parse.urlsplit(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as e:
        return f"no connection to {constants.ENDPOINT}: {e}"
    return None
