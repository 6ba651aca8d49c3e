"""Data parallelism: a 1-D device mesh, the ``jax.shard_map`` train and eval steps, multi-host start-up.

Parameters, optimizer state and teacher are replicated; each batch is split along its rows over the mesh axis
``"data"``. The steps run the very same bodies as the single-device steps (``train.train_step_body`` and
``train.eval_step_body``) with ``axis_name="data"``: the body sums every loss's numerator and denominator over
all devices *inside* the differentiated function, so it is the loss of the global batch, and its gradient is the
global-batch gradient, identical on every device (under ``check_vma``, ``shard_map`` sums the replicated
parameters' gradients over devices itself). So no collective touches the gradients afterwards.
Differentiating each device's own mean instead would give ``num_devices`` times the gradient, and a ``pmean``
of the result would not undo it.

Every batch has exactly ``batch_size`` rows (the data pipeline pads the last one with weight-0 rows), every
loss is normalised by summed weights, and the dropout keys are drawn per row of the global batch outside
``shard_map`` and split like the batch, so results do not depend on the number of devices.
"""

from typing import Any

import equinox as eqx
import jax
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P
from jaxtyping import PyTree

from .batch import Batch
from .data import slice_for_process
from .distill.objective import Objective
from .models import AbstractSequenceClassifier
from .train import (
    EvalCounts,
    StepMetrics,
    Steps,
    TrainState,
    eval_step_body,
    row_dropout_keys,
    train_step_body,
)

DATA = "data"

# Config platform names -> JAX backend names. The TT-XLA PJRT plugin registers its backend as "tt".
_BACKENDS = {"cpu": "cpu", "gpu": "gpu", "tpu": "tpu", "tt": "tt"}


def initialize(num_processes: int, process_id: int, coordinator_address: str | None) -> None:
    """Start ``jax.distributed`` when ``num_processes > 1``; a no-op for one process or when started.

    Must run before anything touches a JAX device. A ``coordinator_address`` of ``None`` leaves it to JAX,
    which reads ``JAX_COORDINATOR_ADDRESS`` or detects a Slurm / Open MPI / Cloud TPU / Kubernetes cluster. On
    CPU the cross-process collectives use gloo (JAX's default ``jax_cpu_collectives_implementation``).
    """
    if num_processes == 1 or jax.distributed.is_initialized():
        return
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
    )


def make_mesh(num_devices: int, platform: str | None) -> Mesh:
    """A 1-D mesh with axis ``"data"`` over ``num_devices`` devices, counted over all processes.

    Arguments:
        num_devices: mesh size, ``>= 1``; with several processes a multiple of the process count, each
            process contributing its first ``num_devices / process_count`` local devices.
        platform: ``"cpu"``, ``"gpu"``, ``"tpu"``, ``"tt"`` (Tenstorrent, via the TT-XLA PJRT plugin), or
            ``None`` for JAX's default backend.

    Returns:
        the mesh; its devices are ordered process by process, so process ``p`` holds the ``p``-th block of
        rows of every batch (what ``data.slice_for_process`` gives it).
    """
    if platform is not None and platform not in _BACKENDS:
        raise ValueError(f"platform={platform!r}; expected None or one of {tuple(_BACKENDS)}")
    backend = None if platform is None else _BACKENDS[platform]
    try:
        available = jax.devices(backend)
    except RuntimeError as e:
        raise ValueError(f"platform={platform!r}: JAX has no such backend here ({e})") from e
    kind = f"{available[0].platform} devices"
    processes = jax.process_count()
    if num_devices < 1:
        raise ValueError(f"num_devices={num_devices}; expected an int >= 1 ({len(available)} {kind} here)")
    if num_devices > len(available):
        raise ValueError(
            f"num_devices={num_devices} requested, but only {len(available)} {kind} are available"
            + (f" across {processes} processes" if processes > 1 else "")
        )
    if num_devices % processes:
        raise ValueError(f"num_devices={num_devices} cannot be split evenly across {processes} processes")
    per_process = num_devices // processes
    devices = []
    for process in range(processes):
        local = sorted((d for d in available if d.process_index == process), key=lambda d: d.id)
        if len(local) < per_process:
            raise ValueError(
                f"num_devices={num_devices} over {processes} processes needs {per_process} {kind} per "
                f"process, but process {process} has {len(local)}"
            )
        devices += local[:per_process]
    # Auto axes: all sharded computation is inside shard_map; outside it arrays behave as ordinary arrays.
    mesh = jax.make_mesh((num_devices,), (DATA,), axis_types=(AxisType.Auto,), devices=devices)
    owners = [d.process_index for d in mesh.devices.flat]
    # make_mesh may reorder TPU devices for the interconnect; `place` needs each process's rows contiguous.
    if owners != sorted(owners):
        raise ValueError(f"the mesh does not keep each process's devices together (owners {owners})")
    return mesh


def sharded_steps(mesh: Mesh, objective: Objective, optimizer: optax.GradientTransformation) -> Steps:
    """Train and eval steps, data-parallel over ``mesh`` (axis ``"data"``), for ``loop.fit`` and ``loop.evaluate``.

    ``train(teacher, state, batch)`` donates the state, not the teacher, and compiles once per batch shape;
    ``evaluate(model, batch)`` returns counts summed over devices and the logits of the whole batch,
    ``(batch, classes)``, replicated so that every process can read them. Batches go through ``place`` (their
    rows must divide evenly over the mesh), states and models through ``place_state``.
    """
    replicated = NamedSharding(mesh, P())
    rows = NamedSharding(mesh, P(DATA))

    @eqx.filter_jit(donate="all-except-first")
    # Counts compilations (max_traces=None never raises): tests assert one trace per batch shape.
    @eqx.debug.assert_max_traces(max_traces=None)
    def train(
        teacher: AbstractSequenceClassifier | None, state: TrainState, batch: Batch
    ) -> tuple[TrainState, StepMetrics]:
        arrays, static = eqx.partition((teacher, state), eqx.is_array)
        # shard_map carries arrays only; the new state's non-array leaves (activations, dropout flags) are
        # recorded while tracing and put back afterwards.
        new_static = []

        def local_step(arrays, batch, row_keys):
            teacher, state = eqx.combine(arrays, static)
            new_state, metrics = train_step_body(
                teacher, state, batch, optimizer, objective, axis_name=DATA, row_keys=row_keys
            )
            new_arrays, new_state_static = eqx.partition(new_state, eqx.is_array)
            new_static.append(new_state_static)
            return new_arrays, metrics

        # The keys the single-device step draws for the same global batch, each row's going with the row.
        row_keys = row_dropout_keys(state.key, batch.model_rows)
        new_arrays, metrics = jax.shard_map(
            local_step, mesh=mesh, in_specs=(P(), P(DATA), P(DATA)), out_specs=(P(), P()), check_vma=True
        )(arrays, batch, row_keys)
        return eqx.combine(new_arrays, new_static[0]), metrics

    @eqx.filter_jit
    def evaluate(model: AbstractSequenceClassifier, batch: Batch) -> tuple[EvalCounts, Any]:
        arrays, static = eqx.partition(model, eqx.is_array)

        def local_eval(arrays, batch):
            counts, logits = eval_step_body(eqx.combine(arrays, static), batch, axis_name=DATA)
            # Gathered here, so that each process can read the logits of the rows other processes hold.
            return counts, jax.lax.all_gather(logits, DATA, tiled=True, to="invarying")

        return jax.shard_map(local_eval, mesh=mesh, in_specs=(P(), P(DATA)), out_specs=P(), check_vma=True)(
            arrays, batch
        )

    def place(batch: Batch) -> Batch:
        """Split a host batch ``(batch, seq)`` over the mesh; each of several processes supplies its rows."""
        for size in {len(batch.labels), batch.model_rows}:
            if size % mesh.size:
                raise ValueError(
                    f"a batch of {size} rows cannot be split evenly over {mesh.size} devices; make batch_size "
                    f"(and eval_batch_size, and packing's rows) a multiple of num_devices={mesh.size}"
                )
        if jax.process_count() == 1:
            return jax.device_put(batch, rows)
        local = slice_for_process(batch, jax.process_index(), jax.process_count())
        return jax.tree.map(
            lambda part, whole: jax.make_array_from_process_local_data(
                rows, np.asarray(part), np.shape(whole)
            ),
            local,
            batch,
        )

    def place_state(tree: PyTree) -> PyTree:
        """Replicate every array of ``tree`` (a model or a ``TrainState``) on every device of the mesh."""
        arrays, static = eqx.partition(tree, eqx.is_array)
        return eqx.combine(jax.tree.map(replicate, arrays), static)

    def replicate(x: jax.Array) -> jax.Array:
        if not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.device_put(x, replicated)
        # With several processes device_put refuses typed PRNG keys (they are not plain arrays): move the raw
        # key data instead.
        data = jax.device_put(jax.random.key_data(x), replicated)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))

    return Steps(train, evaluate, place, place_state, is_writer=jax.process_index() == 0)
