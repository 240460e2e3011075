"""Parameter aliases: the seed systems' spellings (and our own earlier ones) keep working.

latentsurgeon spells each concept one way (the table in ``docs/architecture.md``). Users of the
systems it covers pass their own names: detoxai's ``layer_name``/``cav_layers``, shortcut_detect's
``n_epochs``/``random_state``. :func:`aliased` maps such keyword arguments to the canonical name
before the function runs; the wrapped function's signature (what ``inspect.signature``, and so
``get_params`` and ``sklearn.base.clone``, see) stays the canonical one.

Seed-system spellings are *supported* aliases (no warning). Our own renamed spellings are
*deprecated* aliases (a ``FutureWarning`` saying the new name).

:func:`moved` keeps an earlier *positional order* working the same way: positional arguments
given in the old order (recognised by their number, or by a test of their values) are passed by
their old names, with a ``FutureWarning`` that shows the new order.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from latentsurgeon.errors import InvalidParameterError

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["ALIASES", "MOVED", "aliased", "moved"]

#: Every alias in the library, for the docs and the alias tests: ``{owner: {alias: canonical}}``.
ALIASES: dict[str, dict[str, str]] = {}
#: Every deprecated positional order: ``{owner: (old parameter names, in the old order)}``.
MOVED: dict[str, tuple[str, ...]] = {}


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


def moved(old: tuple[str, ...], *, is_old: Callable[[tuple[Any, ...]], bool] | None = None,
          defaults: Mapping[str, Any] | None = None) -> Callable[[F], F]:
    """Accept positional arguments in the earlier order ``old`` (deprecated, with a
    ``FutureWarning``).

    A call is in the old order when it passes more positional arguments than the new signature
    takes positionally, or when ``is_old(args)`` says so (for a swap of two arguments, told apart
    by their values: a layer selector is never data). Such arguments are passed by their ``old``
    names, or by the canonical name when :func:`aliased` (sitting below this decorator) renamed
    one, so a call warns once. ``defaults`` are the earlier form's defaults for parameters
    that the new form requires (used only for a call in the earlier order).
    """
    def decorate(fn: F) -> F:
        owner = fn.__qualname__.replace(".__init__", "")
        MOVED[owner] = tuple(old)
        signature = inspect.signature(fn)
        positional = [p.name for p in signature.parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        bound_method = bool(positional) and positional[0] == "self"
        new_order = ", ".join(n for n in positional if n != "self")
        # an old name renamed by aliased() below goes straight to its canonical name: one warning
        renamed = getattr(fn, "__aliases__", {})

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            head, rest = (args[:1], args[1:]) if bound_method else ((), args)
            if len(rest) + len(head) <= len(positional) and not (is_old and is_old(rest)):
                return fn(*args, **kwargs)
            if len(rest) > len(old):
                raise InvalidParameterError(
                    f"{owner}: takes at most {len(old)} positional arguments in its earlier order "
                    f"({', '.join(old)}); got {len(rest)}. Pass {new_order} positionally and the "
                    "rest by keyword.")
            for old_name, value in zip(old, rest, strict=False):
                name = renamed.get(old_name, old_name)
                if name in kwargs or old_name in kwargs:
                    raise InvalidParameterError(
                        f"{owner}: {name} was given both positionally (in the earlier order "
                        f"{', '.join(old)}) and by keyword.")
                kwargs[name] = value
            for name, value in (defaults or {}).items():
                kwargs.setdefault(name, value)
            warnings.warn(
                f"{owner}: positional arguments in the order ({', '.join(old[:len(rest)])}) are "
                f"deprecated; the order is ({new_order}), the rest by keyword.",
                FutureWarning, stacklevel=2)
            return fn(*head, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
