"""Layer resolution: one way to name layers across the library.

A layer is named by its ``model.named_modules()`` name. A selector may also be

* a glob (``features.*``; as in :mod:`fnmatch`, ``*`` also matches dots, so ``"transformer.h.*"``
  selects the blocks *and* everything inside them),
* a path glob (``path:transformer.h.*``): ``*`` matches within one dot-separated level, ``**``
  any number of levels (``path:**.attn`` is every ``attn`` at any depth),
* a regular expression (``re:classifier\\.[0-9]+``, matched against the *whole* name so
  ``re:linear1`` does not also select ``linear10``),
* a module class (every instance), a module object,
* a :class:`Select` (a selection with exclusions, skipped containers or leaves only),
* or a list of any of these (the union).
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn

from latentsurgeon.errors import InvalidParameterError, LayerNotFoundError

ROOT_NAME = ""
_GLOB_CHARS = set("*?[")
# Pure containers: they hold layers and add no computation of their own (tdhook skips them too).
CONTAINERS: tuple[type[nn.Module], ...] = (nn.Sequential, nn.ModuleList, nn.ModuleDict)

_ACCEPTED = ("a layer name, a glob ('features.*'), a 'path:' glob ('path:transformer.h.*'), an "
             "'re:' regex, an nn.Module class or instance, a Select(...), or a list of these")


class LayerSelectorError(InvalidParameterError, TypeError):
    """A layer selector of a type no selector form accepts (an int, None, a float...)."""


class Select:
    """A layer selection with exclusions; usable wherever a layer selector is accepted.

    Args:
        layers: the selector of the layers to take (any selector form, a list included).
        exclude: a selector of layers to leave out (may match nothing).
        leaves_only: keep only modules without children (``Linear``, ``Conv2d``...).
        skip_containers: leave out ``nn.Sequential``, ``nn.ModuleList`` and ``nn.ModuleDict``
            (as tdhook does by default): they only hold layers.

    Example::

        Select("features.*", exclude=nn.ReLU)            # every feature layer but the ReLUs
        Select("transformer.h.*", leaves_only=True)       # the Linear/LayerNorm/... inside blocks
        Select("re:.*", skip_containers=True)            # every layer, no Sequential wrappers
    """

    def __init__(self, layers: Any, *, exclude: Any = None, leaves_only: bool = False,
                 skip_containers: bool = False) -> None:
        self.layers = layers
        self.exclude = exclude
        self.leaves_only = leaves_only
        self.skip_containers = skip_containers

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in (("exclude", self.exclude),
                                                      ("leaves_only", self.leaves_only),
                                                      ("skip_containers", self.skip_containers))
                        if v)
        return f"Select({self.layers!r}{extra})"


LayerSelector = str | type | nn.Module | Select | Iterable[str | type | nn.Module | Select]


def is_layer_selector(value: Any) -> bool:
    """Whether ``value`` has the form of a layer selector (a string, a module class or object, a
    :class:`Select`, or a non-empty list or tuple of these). Data never has this form, which lets
    a call tell a layer argument from a data argument by its value."""
    if isinstance(value, (str, nn.Module, Select)):
        return True
    if isinstance(value, type):
        return issubclass(value, nn.Module)
    if isinstance(value, (list, tuple)):
        return bool(value) and all(is_layer_selector(v) and not isinstance(v, (list, tuple))
                                   for v in value)
    return False


def _display(name: str) -> str:
    return name if name else "<root>"


def _not_found(model: nn.Module, selector: object, names: list[str]) -> LayerNotFoundError:
    shown = [n for n in names if n]
    hint = ""
    if isinstance(selector, str):
        query = selector.split(":", 1)[1] if selector.startswith(("re:", "path:")) else selector
        close = difflib.get_close_matches(query, shown, n=5, cutoff=0.5)
        if not close:  # fall back to names sharing the last path component
            tail = query.rsplit(".", 1)[-1]
            close = [n for n in shown if n.rsplit(".", 1)[-1] == tail][:5]
        hint = f" Did you mean: {', '.join(repr(c) for c in close)}?" if close else ""
    what = f"No layer of {type(model).__name__} matches {selector!r}."
    preview = ", ".join(repr(n) for n in shown[:12]) + (" ..." if len(shown) > 12 else "")
    return LayerNotFoundError(
        f"{what}{hint} The model has {len(shown)} named layers ({preview}); "
        "print them all with `latentsurgeon layers` or `[n for n, _ in model.named_modules()]`."
    )


def path_glob_regex(pattern: str) -> re.Pattern[str]:
    """The regex of a path glob: ``*`` and ``?`` stay within one dot-separated level, ``**``
    spans levels (``a.**.b`` also matches ``a.b``), ``[...]`` is a character class."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**.", i):
            out.append(r"(?:.*\.)?")
            i += 3
        elif pattern.startswith(".**", i) and i + 3 == len(pattern):
            out.append(r"(?:\..*)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append(r"[^.]*")
            i += 1
        elif pattern[i] == "?":
            out.append(r"[^.]")
            i += 1
        elif pattern[i] == "[" and pattern.find("]", i + 2) != -1:
            end = pattern.find("]", i + 2)  # a ']' right after '[' belongs to the class
            body = pattern[i + 1:end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append(f"[{body.replace(chr(92), chr(92) * 2)}]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def _selector_type_error(model: nn.Module, selector: object) -> LayerSelectorError:
    hint = ""
    if isinstance(selector, int) and not isinstance(selector, bool):
        names = dict(model.named_modules())
        if str(selector) in names:
            hint = f" To select the layer named '{selector}', pass the string '{selector}'."
    return LayerSelectorError(
        f"layers must be {_ACCEPTED}; got {selector!r} (a {type(selector).__name__}).{hint}")


def _match_one(
    model: nn.Module, selector: object, modules: Mapping[str, nn.Module]
) -> list[str]:
    found = _matches(model, selector, modules)
    if not found:
        raise _not_found(model, selector, list(modules))
    return found


def _matches(model: nn.Module, selector: object, modules: Mapping[str, nn.Module]) -> list[str]:
    """The names ``selector`` matches (maybe none); raises only for an invalid selector."""
    names = list(modules)
    if isinstance(selector, str):
        if selector.startswith("re:"):
            try:
                pattern = re.compile(selector[3:])
            except re.error as exc:
                raise LayerNotFoundError(f"Invalid regular expression {selector!r}: {exc}") from exc
            found = [n for n in names if n and pattern.fullmatch(n)]
        elif selector.startswith("path:"):
            try:
                pattern = path_glob_regex(selector[5:])
            except (re.error, ValueError) as exc:
                raise LayerNotFoundError(f"Invalid path glob {selector!r}: {exc}") from exc
            found = [n for n in names if n and pattern.fullmatch(n)]
        elif _GLOB_CHARS & set(selector):
            found = [n for n in names if n and fnmatch.fnmatchcase(n, selector)]
        else:
            found = [selector] if selector in modules else []
    elif isinstance(selector, type) and issubclass(selector, nn.Module):
        found = [n for n, m in modules.items() if isinstance(m, selector)]
    elif isinstance(selector, nn.Module):
        found = [n for n, m in modules.items() if m is selector]
    elif isinstance(selector, Select):
        found = list(_resolve(model, selector.layers, modules, selector.exclude,
                              selector.leaves_only, selector.skip_containers))
    else:
        raise _selector_type_error(model, selector)
    return found


def _selectors(model: nn.Module, layers: Any) -> list[object]:
    if isinstance(layers, (str, type, nn.Module, Select)):
        return [layers]
    if isinstance(layers, (bytes, Mapping)) or not isinstance(layers, Iterable):
        raise _selector_type_error(model, layers)
    selectors = list(layers)
    if not selectors:
        raise LayerNotFoundError("No layers were selected (an empty list was given).")
    return selectors


def _resolve(model: nn.Module, layers: Any, modules: Mapping[str, nn.Module], exclude: Any,
             leaves_only: bool, skip_containers: bool) -> dict[str, nn.Module]:
    wanted: set[str] = set()
    for selector in _selectors(model, layers):
        wanted.update(_match_one(model, selector, modules))
    if exclude is not None:
        for selector in _selectors(model, exclude):
            # excluding what is not there leaves the selection as it is
            wanted.difference_update(_matches(model, selector, modules))
    if leaves_only:
        wanted = {n for n in wanted if not next(iter(modules[n].children()), None)}
    if skip_containers:
        wanted = {n for n in wanted if not isinstance(modules[n], CONTAINERS)}
    return {name: module for name, module in modules.items() if name in wanted}


def resolve_layers(model: nn.Module, layers: LayerSelector, *, exclude: LayerSelector | None = None,
                   leaves_only: bool = False, skip_containers: bool = False
                   ) -> dict[str, nn.Module]:
    """Resolve a layer selector to ``{name: module}`` in the model's own module order.

    Args:
        model: the network.
        layers: a name (``"features.3"``; ``""`` is the model itself), a glob (``"features.*"``;
            ``*`` also matches dots), a path glob (``"path:transformer.h.*"``: ``*`` stays within
            one level, ``**`` spans levels), a regex (``"re:features\\.[0-9]"``, full match), a
            module class, a module object, a :class:`Select`, or a list/tuple of these (the
            union, without duplicates).
        exclude: a selector of layers to leave out (matching nothing is fine).
        leaves_only: keep only modules without children.
        skip_containers: leave out ``Sequential``/``ModuleList``/``ModuleDict`` (tdhook's default).

    Returns:
        An ordered dict from ``named_modules()`` name to module. The selection may be empty only
        when ``exclude``, ``leaves_only`` or ``skip_containers`` removed everything, which raises.

    Raises:
        LayerNotFoundError: a selector matched nothing (the message lists the closest names), or
            the filters left no layer.
        LayerSelectorError: a selector of an unsupported type, such as an int (also a
            ``TypeError`` and an :class:`~latentsurgeon.errors.InvalidParameterError`).
    """
    modules = dict(model.named_modules())
    found = _resolve(model, layers, modules, exclude, leaves_only, skip_containers)
    if not found:
        raise LayerNotFoundError(
            f"{layers!r} selects layers, but exclude={exclude!r}, leaves_only={leaves_only} and "
            f"skip_containers={skip_containers} leave none of them.")
    return found


def layer_names(model: nn.Module) -> list[str]:
    """All hookable layer names of ``model`` (the root, named ``""``, excluded)."""
    return [name for name, _ in model.named_modules() if name]


def resolve_layer(model: nn.Module, layer: LayerSelector, *, argument: str = "layer") -> str:
    """The canonical ``named_modules()`` name of the one layer ``layer`` selects.

    ``layer`` may be an exact name or any selector (a glob, ``re:``, a module class or object)
    that matches exactly one layer; what is stored and hooked afterwards is the canonical name.

    Raises:
        LayerNotFoundError: the selector matches no layer, or several (the message lists them).
    """
    found = list(resolve_layers(model, layer))
    if len(found) != 1:
        shown = ", ".join(repr(n) if n else "<root>" for n in found[:8])
        raise LayerNotFoundError(
            f"{argument}={layer!r} selects {len(found)} layers ({shown}"
            f"{' ...' if len(found) > 8 else ''}); one layer is needed here: pass one exact layer "
            "name (or a selector that matches exactly one layer).")
    return found[0]


def get_layer(model: nn.Module, layer: LayerSelector) -> nn.Module:
    """The one module ``layer`` selects (see :func:`resolve_layer`); raises
    :class:`LayerNotFoundError` with close matches, or when the selector matches several."""
    return dict(model.named_modules())[resolve_layer(model, layer)]
