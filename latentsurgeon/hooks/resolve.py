"""Layer resolution: one way to name layers across the library.

A layer is named by its ``model.named_modules()`` name. A selector may also be a glob
(``features.*``), a regular expression (``re:classifier\\.[0-9]+``, matched against the *whole* name so
``re:linear1`` does not also select ``linear10``), a module class (every instance), a module object,
or a list of any of these.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Iterable, Mapping

from torch import nn

from latentsurgeon.errors import LayerNotFoundError

LayerSelector = str | type | nn.Module | Iterable[str | type | nn.Module]

ROOT_NAME = ""
_GLOB_CHARS = set("*?[")


def _display(name: str) -> str:
    return name if name else "<root>"


def _not_found(model: nn.Module, selector: object, names: list[str]) -> LayerNotFoundError:
    shown = [n for n in names if n]
    if isinstance(selector, str):
        query = selector[3:] if selector.startswith("re:") else selector
        close = difflib.get_close_matches(query, shown, n=5, cutoff=0.5)
        if not close:  # fall back to names sharing the last path component
            tail = query.rsplit(".", 1)[-1]
            close = [n for n in shown if n.rsplit(".", 1)[-1] == tail][:5]
        hint = f" Did you mean: {', '.join(repr(c) for c in close)}?" if close else ""
        what = f"No layer of {type(model).__name__} matches {selector!r}."
    else:
        hint = ""
        what = f"No layer of {type(model).__name__} matches {selector!r}."
    preview = ", ".join(repr(n) for n in shown[:12]) + (" ..." if len(shown) > 12 else "")
    return LayerNotFoundError(
        f"{what}{hint} The model has {len(shown)} named layers ({preview}); "
        "print them all with `latentsurgeon layers` or `[n for n, _ in model.named_modules()]`."
    )


def _match_one(
    model: nn.Module, selector: object, modules: Mapping[str, nn.Module]
) -> list[str]:
    names = list(modules)
    if isinstance(selector, str):
        if selector.startswith("re:"):
            try:
                pattern = re.compile(selector[3:])
            except re.error as exc:
                raise LayerNotFoundError(f"Invalid regular expression {selector!r}: {exc}") from exc
            found = [n for n in names if n and pattern.fullmatch(n)]
        elif _GLOB_CHARS & set(selector):
            found = [n for n in names if n and fnmatch.fnmatchcase(n, selector)]
        else:
            found = [selector] if selector in modules else []
    elif isinstance(selector, type) and issubclass(selector, nn.Module):
        found = [n for n, m in modules.items() if isinstance(m, selector)]
    elif isinstance(selector, nn.Module):
        found = [n for n, m in modules.items() if m is selector]
    else:
        raise TypeError(
            "A layer selector must be a name, glob, 're:' regex, nn.Module class or instance, "
            f"or a list of these; got {type(selector).__name__}."
        )
    if not found:
        raise _not_found(model, selector, names)
    return found


def resolve_layers(model: nn.Module, layers: LayerSelector) -> dict[str, nn.Module]:
    """Resolve a layer selector to ``{name: module}`` in the model's own module order.

    Args:
        model: the network.
        layers: a name (``"features.3"``; ``""`` is the model itself), a glob (``"features.*"``),
            a regex (``"re:features\\.[0-9]"``, full match), a module class, a module object, or a
            list/tuple of these (the union, without duplicates).

    Returns:
        An ordered dict from ``named_modules()`` name to module.

    Raises:
        LayerNotFoundError: a selector matched nothing; the message lists the closest names.
    """
    modules = dict(model.named_modules())
    if isinstance(layers, (str, type, nn.Module)):
        selectors: list[object] = [layers]
    else:
        selectors = list(layers)
        if not selectors:
            raise LayerNotFoundError("No layers were selected (an empty list was given).")
    wanted: set[str] = set()
    for selector in selectors:
        wanted.update(_match_one(model, selector, modules))
    return {name: module for name, module in modules.items() if name in wanted}


def layer_names(model: nn.Module) -> list[str]:
    """All hookable layer names of ``model`` (the root, named ``""``, excluded)."""
    return [name for name, _ in model.named_modules() if name]


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """The one module called ``name``; raises :class:`LayerNotFoundError` with close matches."""
    found = resolve_layers(model, name)
    if len(found) != 1:
        raise LayerNotFoundError(
            f"{name!r} selects {len(found)} layers ({', '.join(map(_display, found))}); "
            "one exact layer name is needed here."
        )
    return next(iter(found.values()))
