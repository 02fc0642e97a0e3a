"""Handler dropping an iteration's outputs once every other handler has used them."""

from __future__ import annotations

from ignite.engine import Engine, Events

__all__ = ["ReleaseIterationOutputs"]


class ReleaseIterationOutputs:
    """Sets ``engine.state.output`` and ``engine.state.batch`` to None at the end of each iteration.

    Ignite keeps both until the next iteration replaces them, so the network's pass on image k+1 would run while
    image k's full-resolution maps (S_c and S_l: 2 × 2944 × 1920 float32 each, 45 MB apiece) are still held.
    Attach it after every handler that reads them (last in a config's handler list).
    """

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        engine.state.output = None
        engine.state.batch = None
