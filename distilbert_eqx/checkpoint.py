"""Atomic checkpoints of a whole training state, for exact resume and top-k retention by validation accuracy.

A checkpoint directory holds::

    step_00000100/state.eqx    array and scalar leaves in flatten order (``eqx.tree_serialise_leaves``)
    step_00000100/meta.json    step, epoch, batch_in_epoch, val_accuracy, wall_time, the caller's metadata,
                               and a record (path, shape, dtype) of every leaf, checked before restoring
    .tmp-step_00000200-<pid>/  a save in progress, or one a crash interrupted: ignored, and removed by the
                               next save

A ``step_*`` folder only ever appears through one rename of a complete, fsynced temporary folder, and only
ever disappears by being renamed back to a ``.tmp-`` name first, so every ``step_*`` folder is whole.
"""

import json
import math
import os
import re
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.tree_util as jtu
import numpy as np
from jaxtyping import PyTree

StrPath = str | os.PathLike[str]

_STEP_DIR = re.compile(r"step_(\d+)")
_STALE_GLOB = ".tmp-step_*"
_STATE_FILE = "state.eqx"
_META_FILE = "meta.json"
_FORMAT = 1
# The parts of a leaf record that must agree between the checkpoint and ``like``; "impl" is only informative,
# since the key dtype ("key<fry>") already names the PRNG implementation.
_COMPARED = ("kind", "shape", "dtype", "type")


def temp_sibling(final: StrPath) -> Path:
    """The path ``.tmp-<name>-<pid>`` beside ``final``, to build ``final`` in before renaming it into place.

    A sibling is on the same filesystem, which is what makes the final rename atomic.
    """
    final = Path(final)
    return final.parent / f".tmp-{final.name}-{os.getpid()}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    # Bottom-up, so that every file is durable before the directory entry that names it.
    for dirpath, _, filenames in os.walk(root, topdown=False):
        for name in filenames:
            fd = os.open(Path(dirpath) / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _remove(path: Path) -> None:
    # Never follow a symlink: deleting one must not delete what it points to.
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _discard(path: Path) -> None:
    # Rename first, so that a crash halfway through the deletion leaves a ``.tmp-`` name, never a partial
    # folder under its real name.
    aside = Path(f"{temp_sibling(path)}-old")
    os.replace(path, aside)
    _remove(aside)


def atomic_write_text(path: StrPath, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` so that readers see the old file or the new one, never a part."""
    path = Path(path)
    tmp = temp_sibling(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_replace_dir(tmp: StrPath, final: StrPath) -> None:
    """Publish the finished folder ``tmp`` as ``final``: fsync everything in it, then rename it into place.

    Arguments:
        tmp: the completely written folder; it must be a sibling of ``final`` (see ``temp_sibling``), since a
            rename is only atomic within one filesystem.
        final: where the folder should appear. An existing ``final`` is renamed aside and deleted after the
            new one is in place; a crash between those two renames leaves no ``final``, with the old copy
            still under ``.tmp-<name>-<pid>-old``.
    """
    tmp, final = Path(tmp), Path(final)
    if tmp.parent.resolve() != final.parent.resolve():
        raise ValueError(f"{tmp} must be in the same folder as {final}, or the rename would not be atomic")
    _fsync_tree(tmp)
    aside = Path(f"{temp_sibling(final)}-old")
    if final.exists():
        os.replace(final, aside)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    if aside.exists():
        _remove(aside)


def _is_key(x: Any) -> bool:
    is_array = isinstance(x, (jax.Array, jax.ShapeDtypeStruct))
    return is_array and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _leaf_record(path: jtu.KeyPath, x: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"path": jtu.keystr(path)}
    if _is_key(x):
        record.update(kind="key", shape=list(x.shape), dtype=str(x.dtype))
        if isinstance(x, jax.Array):
            record["impl"] = str(jax.random.key_impl(x))
    elif isinstance(x, (jax.Array, np.ndarray, jax.ShapeDtypeStruct)):
        record.update(kind="array", shape=list(x.shape), dtype=str(x.dtype))
    elif eqx.is_array_like(x):
        record.update(kind="scalar", type=type(x).__name__)
    else:
        # Functions and other non-array leaves are not saved; restoring keeps the ones in ``like``.
        record.update(kind="static")
    return record


def _leaf_records(tree: PyTree) -> list[dict[str, Any]]:
    return [_leaf_record(path, x) for path, x in jtu.tree_flatten_with_path(tree)[0]]


def _describe(record: dict[str, Any]) -> str:
    if record["kind"] in ("array", "key"):
        return f"{record['kind']} {record['dtype']}{record['shape']}"
    if record["kind"] == "scalar":
        return f"python scalar {record['type']}"
    return "non-array leaf (not saved)"


def _check_compatible(saved: list[dict[str, Any]], like: list[dict[str, Any]], where: Path) -> None:
    """Raise one error listing every leaf where ``like`` and the checkpoint disagree."""
    saved_by_path = {r["path"]: r for r in saved}
    like_by_path = {r["path"]: r for r in like}
    problems = [f"  {p}: in `like`, not in the checkpoint" for p in like_by_path if p not in saved_by_path]
    problems += [f"  {p}: in the checkpoint, not in `like`" for p in saved_by_path if p not in like_by_path]
    for p, saved_rec in saved_by_path.items():
        like_rec = like_by_path.get(p)
        if like_rec is not None and any(saved_rec.get(k) != like_rec.get(k) for k in _COMPARED):
            problems.append(f"  {p}: checkpoint has {_describe(saved_rec)}, `like` has {_describe(like_rec)}")
    if not problems and [r["path"] for r in saved] != [r["path"] for r in like]:
        problems.append("  the leaves are the same but in a different order (a different tree structure)")
    if problems:
        raise ValueError(f"checkpoint {where} does not match `like`:\n" + "\n".join(problems))


def _to_storable(tree: PyTree) -> PyTree:
    # Typed PRNG keys cannot be written by ``jnp.save``; their raw uint32 data can.
    def convert(x: Any) -> Any:
        if not _is_key(x):
            return x
        if isinstance(x, jax.ShapeDtypeStruct):
            return jax.eval_shape(jax.random.key_data, x)
        return jax.random.key_data(x)

    return jtu.tree_map(convert, tree)


def _restore_leaf(new: Any, old: Any, record: dict[str, Any]) -> Any:
    if record["kind"] == "key":
        # A shape-only ``like`` does not know its implementation; the checkpoint's record does.
        impl = jax.random.key_impl(old) if isinstance(old, jax.Array) else record["impl"]
        new = jax.random.wrap_key_data(new, impl=impl)
    sharding = getattr(old, "sharding", None)
    if isinstance(new, jax.Array) and sharding is not None:
        # Resume on the same devices (e.g. replicated over a data-parallel mesh) as the template.
        new = jax.device_put(new, sharding)
    return new


def _read_meta_file(path: Path) -> dict[str, Any]:
    meta_file = path / _META_FILE
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    if meta.get("format") != _FORMAT:
        raise ValueError(f"{meta_file} has format {meta.get('format')!r}; this code reads format {_FORMAT}")
    return meta


def read_metadata(path: StrPath) -> dict[str, Any]:
    """The metadata of the checkpoint folder ``path``, without loading any arrays.

    Returns:
        ``{"step", "epoch", "batch_in_epoch", "val_accuracy", "wall_time", "metadata"}``, where
        ``wall_time`` is the Unix time of the save and ``metadata`` is the dict the caller passed to ``save``.
    """
    meta = _read_meta_file(Path(path))
    return {k: v for k, v in meta.items() if k not in ("format", "leaves")}


def _rank_key(meta: dict[str, Any]) -> tuple[bool, float, int]:
    accuracy = meta["val_accuracy"]
    return (accuracy is not None, accuracy if accuracy is not None else 0.0, meta["step"])


class CheckpointManager:
    """Saves and restores training states under ``directory``, keeping the best ones and the latest one.

    Retention rule, applied after every save: keep the ``keep_top_k`` checkpoints with the highest
    validation accuracy, where a tie goes to the newer checkpoint and a checkpoint saved without an accuracy
    ranks below every checkpoint with one; and always keep the most recent checkpoint, even when it is not
    among the best, because resuming needs it. Everything else is deleted, so at most ``keep_top_k + 1``
    checkpoints exist.

    Only the writing process (``is_writer=True``, process 0 on multi-host) touches the disk; on the others
    ``save`` and ``clear`` do nothing, while ``restore``, ``latest``, ``best`` and ``list`` read the shared
    folder.
    Saved arrays must be fully addressable or fully replicated, as data-parallel training states are.
    """

    def __init__(self, directory: StrPath, keep_top_k: int, *, is_writer: bool = True):
        if keep_top_k < 1:
            raise ValueError(f"keep_top_k must be at least 1, got {keep_top_k}")
        self.directory = Path(directory)
        self.keep_top_k = keep_top_k
        self.is_writer = is_writer
        if is_writer:
            self.directory.mkdir(parents=True, exist_ok=True)

    def save(
        self,
        step: int,
        state: PyTree,
        *,
        epoch: int,
        batch_in_epoch: int,
        val_accuracy: float | None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write ``state`` atomically as ``step_<step>``, then apply the retention rule.

        Arguments:
            step: the optimizer step the state is at; names the folder and must not have been saved before.
            state: any PyTree (model, optimizer state, typed or raw PRNG keys, Python scalars).
            epoch: the epoch the state is in.
            batch_in_epoch: how many batches of ``epoch`` are already consumed, so resume skips exactly these.
            val_accuracy: validation accuracy for retention, or ``None`` when this step was not evaluated.
            metadata: extra JSON-safe values (str keys; str, int, finite float, bool, None, lists, dicts).

        Returns:
            The checkpoint folder (also on non-writing processes, where nothing is written).
        """
        if step < 0:
            raise ValueError(f"step must be non-negative, got {step}")
        if val_accuracy is not None and not math.isfinite(val_accuracy):
            raise ValueError(f"val_accuracy must be finite or None, got {val_accuracy}")
        meta = {
            "format": _FORMAT,
            "step": step,
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "val_accuracy": val_accuracy,
            "wall_time": time.time(),
            "metadata": dict(metadata or {}),
            "leaves": _leaf_records(state),
        }
        # Serialise before touching the disk, so bad metadata fails without leaving anything behind.
        try:
            meta_text = json.dumps(meta, allow_nan=False, indent=1)
        except (TypeError, ValueError) as e:
            raise ValueError(f"metadata must be JSON-safe (str keys, finite floats, no arrays): {e}") from e
        final = self.directory / f"step_{step:08d}"
        if not self.is_writer:
            return final
        if final.exists():
            raise FileExistsError(f"{final} already exists; refusing to overwrite a checkpoint")
        for stale in self.directory.glob(_STALE_GLOB):
            _remove(stale)
        tmp = temp_sibling(final)
        tmp.mkdir()
        try:
            with open(tmp / _STATE_FILE, "wb") as f:
                eqx.tree_serialise_leaves(f, _to_storable(state))
            (tmp / _META_FILE).write_text(meta_text, encoding="utf-8")
            atomic_replace_dir(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._apply_retention()
        return final

    def restore(self, path: StrPath, like: PyTree) -> tuple[PyTree, dict[str, Any]]:
        """Load the checkpoint folder ``path`` into the structure of ``like``.

        Arguments:
            path: a checkpoint folder, e.g. from ``latest()`` or ``best()``.
            like: a PyTree of the saved structure, e.g. a freshly initialised state or its
                ``eqx.filter_eval_shape``. Its non-array leaves are kept; its arrays' shardings are reused.

        Returns:
            ``(state, metadata)``, with ``metadata`` as from ``read_metadata``.
        """
        path = Path(path)
        meta = _read_meta_file(path)
        saved = meta["leaves"]
        _check_compatible(saved, _leaf_records(like), path)
        try:
            with open(path / _STATE_FILE, "rb") as f:
                loaded = eqx.tree_deserialise_leaves(f, _to_storable(like))
        except Exception as e:
            raise RuntimeError(f"{path / _STATE_FILE} is unreadable although its {_META_FILE} matches") from e
        new_leaves, treedef = jtu.tree_flatten(loaded)
        state = treedef.unflatten(map(_restore_leaf, new_leaves, jtu.tree_leaves(like), saved))
        return state, {k: v for k, v in meta.items() if k not in ("format", "leaves")}

    def latest(self) -> Path | None:
        """The checkpoint with the highest step, or ``None`` if there is none."""
        paths = self.list()
        return paths[-1] if paths else None

    def best(self) -> Path | None:
        """The first checkpoint under the retention ranking (see the class docstring), or ``None``."""
        paths = self.list()
        return max(paths, key=lambda p: _rank_key(read_metadata(p))) if paths else None

    def clear(self) -> None:
        """Delete this manager's checkpoints (``step_<digits>`` and ``.tmp-step_*``) and nothing else.

        Refuses when ``directory`` resolves to ``/``, the home folder or the current working folder.
        """
        resolved = self.directory.resolve()
        if resolved in (Path("/").resolve(), Path.home().resolve(), Path.cwd().resolve()):
            raise ValueError(f"refusing to clear {self.directory}: it is {resolved}, a protected folder")
        if not self.is_writer:
            return
        for path in [*self.list(), *self.directory.glob(_STALE_GLOB)]:
            _remove(path)

    def _apply_retention(self) -> None:
        metas = {p: read_metadata(p) for p in self.list()}
        ranked = sorted(metas, key=lambda p: _rank_key(metas[p]), reverse=True)
        keep = set(ranked[: self.keep_top_k]) | {self.latest()}
        for path in metas:
            if path not in keep:
                _discard(path)

    # Defined last: in the class body, ``list`` names this method from here on, which would break the
    # ``list[...]`` annotations of any method defined below it.
    def list(self) -> list[Path]:
        """All complete checkpoints, oldest step first (in-progress ``.tmp-`` folders are not listed)."""
        if not self.directory.is_dir():
            return []
        found = [p for p in self.directory.iterdir() if _STEP_DIR.fullmatch(p.name) and p.is_dir()]
        return sorted(found, key=lambda p: int(p.name.removeprefix("step_")))
