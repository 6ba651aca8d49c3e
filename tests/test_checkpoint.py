"""Checkpointing: bit-exact round trips, retention of best-k plus latest, crash safety, and safe clearing."""

import json
import os
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optax
import pytest

from distilbert_eqx.checkpoint import CheckpointManager, atomic_replace_dir, atomic_write_text, temp_sibling


@eqx.filter_jit
def _state_arrays(seed: jax.Array, width: int, impl: str) -> dict:
    # Jitted with a traced seed so the whole state compiles once; op-by-op it costs seconds on CPU.
    k_model, k_data, k_train = jax.random.split(jax.random.key(seed), 3)
    model = eqx.nn.MLP(3, 2, width, 2, key=k_model)
    optimizer = optax.adamw(1e-2)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_array))
    x = jax.random.normal(k_data, (5, 3))
    for _ in range(2):
        grads = eqx.filter_grad(lambda m: jnp.mean(jax.vmap(m)(x) ** 2))(model)
        # optax's bias correction computes ``b1 ** count`` (float ** int32); strict promotion rejects that.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        model = eqx.apply_updates(model, updates)
    return {
        "model": model,
        "opt_state": opt_state,
        "key": jax.random.key(seed + 100, impl=impl),
        "train_key": k_train,
        "half": jnp.linspace(0, 1, 4, dtype=jnp.bfloat16) + seed.astype(jnp.bfloat16),
    }


def make_state(seed: int = 0, width: int = 8, impl: str = "threefry2x32") -> dict:
    """A small training state: MLP, AdamW state after two updates, typed keys, bfloat16 array, int step."""
    return _state_arrays(jnp.asarray(seed), width, impl) | {"step": 2 + seed}


def abstract_state(**kwargs) -> dict:
    """``make_state``'s structure with shape-only arrays, as a resuming run would build its template."""
    return eqx.filter_eval_shape(make_state, **kwargs)


def assert_bit_identical(a, b) -> None:
    leaves_a, tree_a = jtu.tree_flatten(a)
    leaves_b, tree_b = jtu.tree_flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b):
        if isinstance(x, jax.Array):
            assert isinstance(y, jax.Array) and x.dtype == y.dtype and x.shape == y.shape
            if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
                x, y = jax.random.key_data(x), jax.random.key_data(y)
            np.testing.assert_array_equal(
                np.asarray(x).reshape(-1).view(np.uint8), np.asarray(y).reshape(-1).view(np.uint8)
            )
        else:
            assert type(x) is type(y) and x == y


def save(manager: CheckpointManager, step: int, state, accuracy: float | None = None) -> Path:
    return manager.save(step, state, epoch=step // 10, batch_in_epoch=step % 10, val_accuracy=accuracy)


def steps(paths: list[Path]) -> list[int]:
    return [int(p.name.removeprefix("step_")) for p in paths]


def test_round_trip_is_bit_identical(tmp_path):
    state = make_state(seed=0)
    manager = CheckpointManager(tmp_path, keep_top_k=2)
    path = manager.save(
        7, state, epoch=1, batch_in_epoch=3, val_accuracy=0.75, metadata={"lr": 1e-2, "tags": ["a", None]}
    )
    assert path == tmp_path / "step_00000007"

    restored, meta = manager.restore(path, make_state(seed=1))
    assert_bit_identical(restored, state)
    assert {k: meta[k] for k in ("step", "epoch", "batch_in_epoch", "val_accuracy")} == {
        "step": 7,
        "epoch": 1,
        "batch_in_epoch": 3,
        "val_accuracy": 0.75,
    }
    assert meta["metadata"] == {"lr": 1e-2, "tags": ["a", None]}
    assert isinstance(meta["wall_time"], float)
    # The restored key continues the same random stream.
    np.testing.assert_array_equal(jax.random.normal(restored["key"], 3), jax.random.normal(state["key"], 3))

    # A shape-only template (no arrays allocated) restores the same state, typed keys included.
    abstract, _ = manager.restore(path, abstract_state())
    assert_bit_identical(abstract, state)


def test_restore_keeps_template_sharding(tmp_path):
    mesh = jax.make_mesh((len(jax.devices()),), ("data",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    state = {"w": jnp.arange(6.0).reshape(2, 3), "key": jax.random.key(0)}
    manager = CheckpointManager(tmp_path, keep_top_k=1)
    path = save(manager, 1, state)
    restored, _ = manager.restore(path, jax.device_put(state, replicated))
    assert restored["w"].sharding == replicated and restored["key"].sharding == replicated
    assert_bit_identical(restored, state)


@pytest.mark.parametrize(
    ("keep_top_k", "accuracies", "kept", "best"),
    [
        # Best two by accuracy (steps 2, 3) plus the latest (4).
        (2, [0.5, 0.7, 0.6, 0.4], [2, 3, 4], 2),
        # Ties go to the newer checkpoint.
        (1, [0.8, 0.8, 0.5], [2, 3], 2),
        # Unevaluated checkpoints rank below evaluated ones; among themselves, newer first.
        (2, [None, 0.5, None, None], [2, 4], 2),
        # A latest that is not among the best is kept, and dropped once it is no longer the latest.
        (1, [0.9, 0.1, 0.2], [1, 3], 1),
        # The latest is also the best: exactly keep_top_k remain.
        (2, [0.1, 0.2, 0.3, 0.4], [3, 4], 4),
        # Nothing evaluated: the newest keep_top_k remain and the newest is "best".
        (2, [None, None, None], [2, 3], 3),
    ],
)
def test_retention_keeps_best_k_and_latest(tmp_path, keep_top_k, accuracies, kept, best):
    manager = CheckpointManager(tmp_path, keep_top_k=keep_top_k)
    for step, accuracy in enumerate(accuracies, start=1):
        save(manager, step, {"x": jnp.full(2, float(step))}, accuracy)
        assert manager.latest() == tmp_path / f"step_{step:08d}"
        assert len(manager.list()) <= keep_top_k + 1
    assert steps(manager.list()) == kept
    assert manager.best() == tmp_path / f"step_{best:08d}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"step_{s:08d}" for s in kept]


def test_crash_mid_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path, keep_top_k=2)
    state = make_state(seed=0)
    first = save(manager, 100, state, 0.5)
    at_crash = {}
    real_serialise = eqx.tree_serialise_leaves

    def serialise_then_crash(f, tree):
        n_saved = sum(eqx.is_array_like(x) for x in jtu.tree_leaves(tree))
        written = 0

        def spec(file, x):
            nonlocal written
            if written == n_saved // 2:
                # The disk as a SIGKILL at this moment would leave it.
                file.flush()
                at_crash["tmp"] = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-"))
                at_crash["partial_bytes"] = os.path.getsize(file.name)
                at_crash["list"] = manager.list()
                at_crash["latest"] = manager.latest()
                at_crash["restored"] = manager.restore(manager.latest(), make_state(seed=1))[0]
                raise OSError("simulated crash")
            eqx.default_serialise_filter_spec(file, x)
            written += eqx.is_array_like(x)

        real_serialise(f, tree, filter_spec=spec)

    monkeypatch.setattr(eqx, "tree_serialise_leaves", serialise_then_crash)
    # Equinox re-raises errors inside serialisation as RuntimeErrors naming the leaf; ours is the root cause.
    with pytest.raises(RuntimeError) as error:
        save(manager, 200, make_state(seed=2), 0.9)
    root = error.value
    while root.__cause__ is not None:
        root = root.__cause__
    assert isinstance(root, OSError) and str(root) == "simulated crash"

    assert at_crash["tmp"] == [f".tmp-step_00000200-{os.getpid()}"] and at_crash["partial_bytes"] > 0
    assert at_crash["list"] == [first] and at_crash["latest"] == first
    assert_bit_identical(at_crash["restored"], state)
    # Afterwards: no step_00000200 at all, the temporary folder is gone, the previous checkpoint restores.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000100"]
    assert_bit_identical(manager.restore(manager.latest(), make_state(seed=1))[0], state)


def test_leftover_temp_folder_is_ignored_then_cleaned(tmp_path):
    manager = CheckpointManager(tmp_path, keep_top_k=2)
    first = save(manager, 100, {"x": jnp.ones(2)}, 0.9)
    # What a process killed mid-save leaves behind: another pid, a higher step, a valid-looking meta.json.
    leftover = tmp_path / ".tmp-step_00000200-424242"
    leftover.mkdir()
    (leftover / "state.eqx").write_bytes(b"\x93NUMPY partial")
    (leftover / "meta.json").write_text((first / "meta.json").read_text())
    assert manager.list() == [first] and manager.latest() == first and manager.best() == first

    second = save(manager, 300, {"x": jnp.zeros(2)}, None)
    assert not leftover.exists()
    assert manager.list() == [first, second] and manager.latest() == second


def test_clear_removes_only_own_entries(tmp_path):
    directory = tmp_path / "ckpt"
    manager = CheckpointManager(directory, keep_top_k=3)
    for step in (1, 2):
        save(manager, step, {"x": jnp.ones(2)}, 0.5)
    (directory / ".tmp-step_00000003-424242").mkdir()
    (directory / "notes.txt").write_text("keep me")
    (directory / "step_notes.txt").write_text("keep me too")
    (directory / "other").mkdir()
    (tmp_path / "beside.txt").write_text("keep me")

    manager.clear()
    assert sorted(p.name for p in directory.iterdir()) == ["notes.txt", "other", "step_notes.txt"]
    assert (tmp_path / "beside.txt").read_text() == "keep me"
    assert manager.latest() is None and manager.best() is None


def test_clear_refuses_dangerous_directories(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    own = save(CheckpointManager(tmp_path, keep_top_k=1), 1, {"x": jnp.ones(2)})
    (tmp_path / "link").symlink_to(tmp_path)
    for directory in ("/", Path.home(), tmp_path, ".", "link", tmp_path / "sub" / ".."):
        with pytest.raises(ValueError, match="refusing to clear"):
            CheckpointManager(directory, keep_top_k=1).clear()
    assert own.exists()


def test_non_writer_writes_nothing(tmp_path):
    directory = tmp_path / "ckpt"
    reader = CheckpointManager(directory, keep_top_k=1, is_writer=False)
    assert save(reader, 5, {"x": jnp.ones(2)}) == directory / "step_00000005"
    assert not directory.exists() and reader.latest() is None

    path = save(CheckpointManager(directory, keep_top_k=1), 5, {"x": jnp.ones(2)})
    reader.clear()
    assert reader.latest() == path
    assert_bit_identical(reader.restore(path, {"x": jnp.zeros(2)})[0], {"x": jnp.ones(2)})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s | {"model": abstract_state(width=16)["model"]}, r"\['model'\]\.layers\[0\]\.weight: "),
        (lambda s: s | {"half": s["half"].astype(jnp.float32)}, r"\['half'\]: checkpoint has array bfloat16"),
        (lambda s: s | {"extra": jnp.zeros(2)}, r"\['extra'\]: in `like`, not in the checkpoint"),
        (lambda s: {k: v for k, v in s.items() if k != "half"}, r"\['half'\]: in the checkpoint, not in"),
        (lambda s: s | {"key": abstract_state(impl="rbg")["key"]}, r"\['key'\]: checkpoint has key key<fry>"),
        (lambda s: s | {"step": 2.0}, r"\['step'\]: checkpoint has python scalar int, `like` has .* float"),
    ],
)
def test_mismatched_template_names_the_leaf(tmp_path, change, message):
    manager = CheckpointManager(tmp_path, keep_top_k=1)
    state = make_state()
    path = save(manager, 1, state)
    with pytest.raises(ValueError, match=message):
        manager.restore(path, change(state))


def test_mismatch_error_lists_every_leaf(tmp_path):
    manager = CheckpointManager(tmp_path, keep_top_k=1)
    path = save(manager, 1, make_state(width=8))
    with pytest.raises(ValueError) as error:
        manager.restore(path, abstract_state(width=16))
    # Model weights and biases of the first two layers, and the same again in AdamW's mu and nu.
    assert str(error.value).count("checkpoint has array float32") == 3 * (2 + 2 + 1)
    assert "array float32[8, 3]" in str(error.value) and "array float32[16, 3]" in str(error.value)


def test_truncated_state_file_is_a_clear_error(tmp_path):
    manager = CheckpointManager(tmp_path, keep_top_k=1)
    state = make_state()
    path = save(manager, 1, state)
    data = (path / "state.eqx").read_bytes()
    (path / "state.eqx").write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeError, match="state.eqx is unreadable"):
        manager.restore(path, state)


def test_save_rejects_bad_input_before_writing(tmp_path):
    manager = CheckpointManager(tmp_path, keep_top_k=1)
    for bad in ({"a": jnp.ones(2)}, {"loss": np.nan}):
        with pytest.raises(ValueError, match="JSON-safe"):
            manager.save(1, {"x": jnp.ones(2)}, epoch=0, batch_in_epoch=1, val_accuracy=None, metadata=bad)
    with pytest.raises(ValueError, match="finite"):
        save(manager, 1, {"x": jnp.ones(2)}, float("nan"))
    assert list(tmp_path.iterdir()) == []
    save(manager, 1, {"x": jnp.ones(2)})
    with pytest.raises(FileExistsError):
        save(manager, 1, {"x": jnp.ones(2)})
    with pytest.raises(ValueError, match="keep_top_k"):
        CheckpointManager(tmp_path, keep_top_k=0)


def test_atomic_write_text(tmp_path):
    path = tmp_path / "metrics.json"
    atomic_write_text(path, json.dumps({"accuracy": 0.5}))
    atomic_write_text(path, json.dumps({"accuracy": 0.9}))
    assert json.loads(path.read_text()) == {"accuracy": 0.9}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_atomic_replace_dir(tmp_path):
    final = tmp_path / "model"
    for version in ("old", "new"):
        tmp = temp_sibling(final)
        tmp.mkdir()
        (tmp / "config.json").write_text(version)
        atomic_replace_dir(tmp, final)
    assert (final / "config.json").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]

    elsewhere = tmp_path / "sub" / "tmp"
    elsewhere.mkdir(parents=True)
    with pytest.raises(ValueError, match="same folder"):
        atomic_replace_dir(elsewhere, final)
