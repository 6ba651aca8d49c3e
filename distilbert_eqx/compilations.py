"""What a run compiled: every XLA program built while a ``Compilations`` is open, counted and timed by the
name of the function it came from, through ``jax.monitoring``'s compile events.

On a 2-core machine compiling can take longer than a short run's steps; this says how much, and which
functions (a new length bucket compiles the train step again) cost it.
"""

import collections
from typing import Any

import jax.monitoring

# jax._src.dispatch's event names: XLA's backend compile, and tracing + lowering to MLIR before it.
BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
TRACE_AND_LOWER = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
)


class Compilations:
    """A context manager that records every compilation while it is open: ``programs`` maps a function name to
    ``[count, seconds of backend compile]``; ``trace_seconds`` is the time spent tracing and lowering."""

    def __init__(self) -> None:
        self.programs: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
        self.trace_seconds = 0.0

    def _listen(self, event: str, seconds: float, **kwargs: Any) -> None:
        if event == BACKEND_COMPILE:
            entry = self.programs[str(kwargs.get("fun_name", "?"))]
            entry[0] += 1
            entry[1] += seconds
        elif event in TRACE_AND_LOWER:
            self.trace_seconds += seconds

    def __enter__(self) -> "Compilations":  # noqa: PYI034 (beartype rejects typing.Self here)
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def __exit__(self, *exc: object) -> None:
        jax.monitoring.unregister_event_duration_listener(self._listen)

    @property
    def count(self) -> int:
        return int(sum(count for count, _ in self.programs.values()))

    @property
    def compile_seconds(self) -> float:
        return sum(seconds for _, seconds in self.programs.values())

    def summary(self, top: int = 4) -> str:
        """One line: programs, seconds, and the functions that cost most (``train_step x9 31.0 s, ...``)."""
        costly = sorted(self.programs.items(), key=lambda item: -item[1][1])[:top]
        parts = ", ".join(f"{name} x{int(count)} {seconds:.1f} s" for name, (count, seconds) in costly)
        rest = len(self.programs) - len(costly)
        more = f", {rest} other function(s)" if rest > 0 else ""
        return (
            f"compiled {self.count} programs in {self.compile_seconds:.1f} s ({parts}{more}); tracing and "
            f"lowering {self.trace_seconds:.1f} s"
        )
