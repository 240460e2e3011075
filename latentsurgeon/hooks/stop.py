"""Stopping a forward pass early, once every requested layer has produced its output: the one
early stop of the library (every read of a layer, with or without gradients, stops this way).

A hook on the requested layers counts their calls in the current pass; when each has run as often
as it runs in a whole forward pass, the hook raises the private :class:`_StopForward` and
:meth:`ForwardStopper.run` (or :meth:`ForwardStopper.run_as`) catches it. Nothing after the last
requested layer runs, and the exception never reaches user code (nnsight stops its passes the same
way; TransformerLens has ``stop_at_layer``).

How often a layer runs per pass is learned, not assumed: the first pass of a given model, layer set
and forward runs whole and counts the calls; later passes stop right after the last call of the last
layer (a layer that runs twice stops the pass after its second call). The counts are remembered per
model (weakly; for the model's own forward, ``model(...)`` also with other weights swapped in,
across calls; for a custom forward function, within one stopper) and assumed to be the same for every input: a model whose control flow
depends on the data (a mixture of experts, early-exit networks, a varying number of loop
iterations) must be read with ``stop_early=False``.

The unwinding leaves the model as it was: the exception travels through ``Module.__call__`` like
any error (PyTorch runs ``always_call`` forward hooks on the way out), and the hooks that count are
removed by their :class:`~latentsurgeon.hooks.HookGroup`.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

__all__ = ["ForwardStopper"]


class _StopForward(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Ends a forward pass once every requested layer has recorded; caught by ForwardStopper.run.

    An ``Exception`` (not a ``BaseException``) so that PyTorch's ``Module.__call__`` runs the
    model's ``always_call`` forward hooks while it unwinds, as it does for any error.
    """


# model -> {(layer names, training): {name: calls per pass}} for the model's own forward.
_CALLS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, dict[str, int]]] = (
    weakref.WeakKeyDictionary())


def forget_calls(model: nn.Module) -> None:
    """Drop what was learned about how often ``model``'s layers run per pass."""
    _CALLS.pop(model, None)


class ForwardStopper:
    """Counts the calls of ``names`` in the current pass and stops the pass when it is complete.

    Args:
        model: the network whose layers are watched.
        names: the requested layer names.
        enabled: ``False`` never stops (every pass runs whole).

    Use: call :meth:`count` from each requested layer's forward hook (after recording its output)
    and run the model through :meth:`run`.
    """

    def __init__(self, model: nn.Module, names: Sequence[str], *, enabled: bool = True) -> None:
        self.model = model
        self.names = list(names)
        self.enabled = enabled
        self.calls: dict[str, int] = dict.fromkeys(self.names, 0)
        self.stopped = False  # did the last pass stop early?
        self._armed: dict[str, int] | None = None  # expected calls, while a pass may stop
        self._local: dict[Any, dict[str, int]] = {}  # learned counts for custom forwards

    # -- inside hooks ------------------------------------------------------------------------
    def count(self, name: str) -> bool:
        """Count a call of ``name``; True when this call completes the pass (the caller then
        raises :meth:`stop` after recording; nothing later in the model will run)."""
        self.calls[name] = self.calls.get(name, 0) + 1
        expected = self._armed
        if expected is None:
            return False
        return all(self.calls.get(n, 0) >= k for n, k in expected.items())

    def stop(self) -> None:
        """End the pass (call it from the hook, after recording)."""
        raise _StopForward(self)

    # -- around the model call ------------------------------------------------------------------
    def _key(self, forward: Any) -> tuple[dict, Any]:
        """Where the counts for passes through ``forward`` are remembered, and under which key."""
        key = (tuple(self.names), bool(self.model.training))
        if forward is self.model:
            return _CALLS.setdefault(self.model, {}), key
        return self._local, (key, id(forward))

    def run(self, target: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``target(*args, **kwargs)``, stopped early when every requested layer has run; returns
        its output, or None when the pass was stopped (then ``self.stopped`` is True). The
        counts are the model's own when ``target`` is the model, else ``target``'s."""
        return self.run_as(target, lambda: target(*args, **kwargs))

    def run_as(self, forward: Any, call: Callable[[], Any]) -> Any:
        """``call()``, a pass through ``forward`` (the model itself, or a custom forward function
        whose identity keys the learned counts), stopped as :meth:`run` stops it."""
        self.calls = dict.fromkeys(self.names, 0)
        self.stopped = False
        table, key = self._key(forward)
        expected = table.get(key) if self.enabled else None
        # A layer that did not run in the learned pass cannot be waited for.
        self._armed = ({n: k for n, k in expected.items() if k > 0}
                       if expected and any(expected.values()) else None)
        try:
            output = call()
        except _StopForward as signal:
            if signal.args[0] is not self:  # another reader's stop, around this one
                raise
            self.stopped = True
            return None
        finally:
            self._armed = None
        if self.enabled:
            # A whole pass: learn (or update) how often each layer runs in one.
            table[key] = dict(self.calls)
        return output
