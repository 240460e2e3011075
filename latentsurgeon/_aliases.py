"""Parameter aliases: the seed systems' spellings (and our own earlier ones) keep working.

latentsurgeon spells each concept one way (the table in ``docs/architecture.md``). Users of the
systems it covers pass their own names: detoxai's ``layer_name``/``cav_layers``, shortcut_detect's
``n_epochs``/``random_state``. :func:`aliased` maps such keyword arguments to the canonical name
before the function runs; the wrapped function's signature (what ``inspect.signature``, and so
``get_params`` and ``sklearn.base.clone``, see) stays the canonical one.

Seed-system spellings are *supported* aliases (no warning). Our own renamed spellings are
*deprecated* aliases (a ``FutureWarning`` saying the new name).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from latentsurgeon.errors import InvalidParameterError

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["ALIASES", "aliased"]

#: Every alias in the library, for the docs and the alias tests: ``{owner: {alias: canonical}}``.
ALIASES: dict[str, dict[str, str]] = {}


def aliased(supported: Mapping[str, str] | None = None, *,
            deprecated: Mapping[str, str] | None = None) -> Callable[[F], F]:
    """Accept ``alias=value`` for ``canonical=value``.

    Args:
        supported: ``{alias: canonical}`` accepted silently (the seed systems' spellings).
        deprecated: ``{alias: canonical}`` accepted with a ``FutureWarning``.

    Passing both an alias and its canonical name raises :class:`InvalidParameterError`.
    """
    supported = dict(supported or {})
    deprecated = dict(deprecated or {})

    def decorate(fn: F) -> F:
        owner = fn.__qualname__.replace(".__init__", "")
        ALIASES.setdefault(owner, {}).update({**supported, **deprecated})

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for table, warn in ((supported, False), (deprecated, True)):
                for alias, canonical in table.items():
                    if alias not in kwargs:
                        continue
                    if canonical in kwargs:
                        raise InvalidParameterError(
                            f"{owner}: pass {canonical}= or its alias {alias}=, not both.")
                    if warn:
                        warnings.warn(f"{owner}: {alias}= is deprecated; use {canonical}=.",
                                      FutureWarning, stacklevel=2)
                    kwargs[canonical] = kwargs.pop(alias)
            return fn(*args, **kwargs)

        wrapper.__aliases__ = {**supported, **deprecated}  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate
