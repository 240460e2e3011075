"""tdhook's latent methods (``tdhook.latent``) on latentsurgeon.

``ActivationCaching``, ``ActivationPatching``, ``Probing``, ``SteeringVectors`` and
``ActivationAddition`` keep tdhook's names, parameters, defaults and lifecycle: a method object
holds the configuration, ``prepare(model)`` builds a context, and ``with context as hooked:``
installs the hooks, which are removed on exit (also on error)::

    with ActivationCaching(r"features\\.(0|3)$").prepare(model) as hooked:
        out = hooked(TensorDict({"input": x}, batch_size=[len(x)]))
    out["cache", "features.0"]              # also hooked.hooking_context.cache["features.0"]

``hooked`` takes a ``TensorDict`` where ``tensordict`` is installed (an optional extra), a dict
with the same keys (``{"input": x}``; nested keys as tuples or nested dicts), or plain tensors
(``hooked(x)`` returns the model's output). The work is latentsurgeon's: layers are selected by
:func:`latentsurgeon.hooks.resolve_layers` (tdhook's ``key_pattern`` becomes an ``'re:'``
selector, :func:`key_pattern_selector`), hooks are a :class:`~latentsurgeon.hooks.HookGroup`,
the model is called through :class:`~latentsurgeon.activations.access.ModelAccess`, patching is
:func:`latentsurgeon.intervene.patch`, steering :class:`latentsurgeon.intervene.SteeringVector`
and :class:`latentsurgeon.intervene.ActivationAddition`, and the mean-difference probe
:class:`latentsurgeon.concepts.CAV` (``"mass_mean"``, ``zero_direction="keep"``).
``docs/compat.md`` lists every difference from tdhook with its reason.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from latentsurgeon.activations.access import ModelAccess
from latentsurgeon.concepts import CAV
from latentsurgeon.errors import (
    InvalidParameterError,
    LatentSurgeonError,
    LayerNotFoundError,
    ShapeMismatchError,
)
from latentsurgeon.hooks import HookGroup, layer_names, resolve_layers
from latentsurgeon.intervene import ActivationAddition as _ActivationAddition
from latentsurgeon.intervene import SteeringVector, patch

try:  # an optional extra: without it, dicts and plain tensors are the inputs
    from tensordict import TensorDict, TensorDictBase
    from tensordict.nn import TensorDictModuleBase
except ImportError:  # pragma: no cover - exercised where tensordict is not installed
    TensorDict = TensorDictBase = TensorDictModuleBase = None

__all__ = [
    "DIRECTIONS",
    "ActivationAddition",
    "ActivationCaching",
    "ActivationPatching",
    "HookedModule",
    "HookingContext",
    "HookingContextFactory",
    "MeanDifferenceClassifier",
    "Probe",
    "ProbeManager",
    "Probing",
    "SteeringVectors",
    "key_pattern_selector",
]

#: tdhook's hook directions: after the forward, before it, the full backward (gradients w.r.t.
#: the inputs) and before the backward (gradients w.r.t. the outputs).
DIRECTIONS = ("fwd", "fwd_pre", "bwd", "bwd_pre")
#: What tdhook passes to a callback in each direction (besides ``key`` and ``direction``).
_PARAMS = {"fwd": ("module", "args", "output"), "fwd_pre": ("module", "args"),
           "bwd": ("module", "grad_input", "grad_output"), "bwd_pre": ("module", "grad_output")}
#: The value a direction reads: tdhook's ``DIRECTION_TO_RETURN``.
_VALUE = {"fwd": "output", "fwd_pre": "args", "bwd": "grad_input", "bwd_pre": "grad_output"}
#: tdhook's names of a plain module in its wrapper, seen with ``relative=False``.
_WRAPPER = "td_module.module"
_LEADING_FLAGS = re.compile(r"^\(\?[aiLmsux]+\)")


# -- layer selection -------------------------------------------------------------------------------
def key_pattern_selector(key_pattern: str) -> str:
    """tdhook's ``key_pattern`` as latentsurgeon's ``'re:'`` selector.

    tdhook selects a module when ``re.match(key_pattern, name)`` succeeds: a match at the start
    of the name, so ``"linear1"`` also selects ``"linear10"`` (anchor with ``$``). An ``'re:'``
    selector must match the whole name, so the pattern gets ``(?s:.*)`` appended; leading global
    flags (``(?i)``) stay in front, where Python requires them. The two select the same names.

    Raises:
        InvalidParameterError: ``key_pattern`` is not a string or not a valid regex.
    """
    if not isinstance(key_pattern, str):
        raise InvalidParameterError(
            f"key_pattern must be a regular expression string (matched at the start of module "
            f"names, as tdhook does); got {key_pattern!r} (a {type(key_pattern).__name__}).")
    try:
        re.compile(key_pattern)
    except re.error as exc:
        raise InvalidParameterError(
            f"key_pattern must be a valid regular expression; got {key_pattern!r}: {exc}.") from exc
    flags = ""
    body = key_pattern
    while (found := _LEADING_FLAGS.match(body)) is not None:
        flags += found.group(0)
        body = body[found.end():]
    return f"re:{flags}(?:{body})(?s:.*)"


def _matched_names(model: nn.Module, key_pattern: str, relative: bool,
                   classes_to_hook: tuple[type, ...] = (nn.Module,),
                   classes_to_skip: tuple[type, ...] = ()) -> dict[str, str]:
    """``{tdhook key: our layer name}`` of the modules ``key_pattern`` selects.

    ``relative=True``: keys are ``named_modules()`` names. ``relative=False``: tdhook matches
    against the names inside its wrapper, ``td_module.module`` (the model itself) and
    ``td_module.module.<name>``; those are the keys, mapped back to our names (``""`` = the
    model)."""
    selector = key_pattern_selector(key_pattern)
    if relative:
        try:
            found = resolve_layers(model, selector)
        except LayerNotFoundError as exc:
            raise LayerNotFoundError(
                f"key_pattern {key_pattern!r} matches no module name at its start (tdhook would "
                f"hook nothing): {exc}") from exc
        pairs = {name: name for name in found}
    else:
        pattern = re.compile(selector[3:])
        virtual = {_WRAPPER: "", **{f"{_WRAPPER}.{n}": n for n in layer_names(model)}}
        pairs = {key: name for key, name in virtual.items() if pattern.fullmatch(key)}
        if not pairs:
            raise LayerNotFoundError(
                f"key_pattern {key_pattern!r} with relative=False matches none of tdhook's "
                f"wrapped names ({_WRAPPER!r}, '{_WRAPPER}.<name>', e.g. "
                f"{list(virtual)[1:4]}).")
    modules = dict(model.named_modules())
    kept = {key: name for key, name in pairs.items()
            if isinstance(modules[name], classes_to_hook)
            and not isinstance(modules[name], classes_to_skip)}
    if not kept:
        raise LayerNotFoundError(
            f"key_pattern {key_pattern!r} matches {sorted(pairs)}, but classes_to_hook and "
            "classes_to_skip leave none of them.")
    return kept


def _module_name(model: nn.Module, key: Any, argument: str) -> str:
    """A module key of tdhook's ``modules_to_*`` lists as a ``named_modules()`` name: dotted
    names as they are, tdhook's index paths (``layers[0]``, ``blocks['a']``) as ``layers.0``."""
    if not isinstance(key, str):
        raise InvalidParameterError(
            f"{argument} must hold module names (strings); got {key!r} (a "
            f"{type(key).__name__}).")
    name = re.sub(r"\[\s*['\"]?([^\]'\"]+?)['\"]?\s*\]", r".\1", key).strip(".")
    modules = dict(model.named_modules())
    if name not in modules:
        raise LayerNotFoundError(
            f"{argument}: no module named {key!r} in the model (a name of "
            f"model.named_modules(), such as {layer_names(model)[:5]}).")
    return name


def _module_list(value: Any, argument: str) -> list[Any]:
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise InvalidParameterError(
            f"{argument} must be a non-empty list of module names; got {value!r}.")
    return list(value)


def _check_callable(value: Any, argument: str, form: str) -> None:
    if value is not None and not callable(value):
        raise InvalidParameterError(
            f"{argument} must be None or a function {form}; got {value!r} (a "
            f"{type(value).__name__}).")


def _check_directions(directions: Any) -> list[str]:
    chosen = ["fwd"] if directions is None else directions
    if isinstance(chosen, str) or not isinstance(chosen, Sequence) or not chosen \
            or any(d not in DIRECTIONS for d in chosen):
        raise InvalidParameterError(
            f"directions must be None or a non-empty list of {list(DIRECTIONS)}; got "
            f"{directions!r}.")
    return list(chosen)


# -- records: TensorDicts, dicts ------------------------------------------------------------------
def _is_record(data: Any) -> bool:
    return (TensorDictBase is not None and isinstance(data, TensorDictBase)) \
        or isinstance(data, Mapping)


def _path(key: Any) -> tuple[str, ...]:
    return (key,) if isinstance(key, str) else tuple(key)


def _has(data: Any, key: Any) -> bool:
    if TensorDictBase is not None and isinstance(data, TensorDictBase):
        return key in data.keys(include_nested=True)
    if key in data:
        return True
    node = data
    for part in _path(key):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def _get(data: Any, key: Any, what: str = "data") -> Any:
    """``data[key]`` of a TensorDict or a dict (a tuple key read flat or nested)."""
    if not _has(data, key):
        present = (sorted(map(str, data.keys(include_nested=True)))
                   if TensorDictBase is not None and isinstance(data, TensorDictBase)
                   else sorted(map(str, data)))
        raise InvalidParameterError(
            f"{what} must hold the key {key!r} (tdhook's in_keys); it holds {present}.")
    if TensorDictBase is not None and isinstance(data, TensorDictBase):
        return data[key]  # indexing unwraps non-tensor entries ("fit"), as tdhook reads them
    if key in data:
        return data[key]
    node = data
    for part in _path(key):
        node = node[part]
    return node


def _set(data: Any, key: Any, value: Any) -> None:
    """``data[key] = value``; a tuple key of a dict is written nested, as a TensorDict does."""
    if TensorDictBase is not None and isinstance(data, TensorDictBase):
        try:
            data.set(key, value)
        except RuntimeError as exc:  # a value whose leading dims are not the batch's
            raise ShapeMismatchError(
                f"Cannot store {key!r} in a TensorDict of batch size {list(data.batch_size)}: "
                f"{exc}") from exc
        return
    *parents, last = _path(key)
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def _new_cache() -> Any:
    return TensorDict() if TensorDict is not None else {}


def _copy_cache(cache: Any, like: Any) -> Any:
    """A shallow copy of ``cache`` of the kind of record ``like``: a TensorDict for a TensorDict
    record, nested dicts for a dict record (whatever kind the cache itself is)."""
    if TensorDictBase is not None and isinstance(like, TensorDictBase):
        return cache.copy() if isinstance(cache, TensorDictBase) else TensorDict(cache)
    items = cache.items()
    return {k: _copy_cache(v, like) if _is_record(v) else v for k, v in items}


# -- the lifecycle: factory -> context -> hooked module --------------------------------------------
class HookingContextFactory:
    """The base of tdhook's methods: holds the configuration; :meth:`prepare` builds a
    :class:`HookingContext` for a model."""

    _hooking_context_kwargs: dict[str, Any]

    def __init__(self) -> None:
        self._hooking_context_kwargs = {}

    def prepare(self, module: nn.Module, in_keys: Any = None, out_keys: Any = None, *,
                return_context: bool = True) -> HookingContext | HookedModule:
        """A context for ``module`` (enter it with ``with ... as hooked``), or with
        ``return_context=False`` the hooked module, already entered (``hooked.restore()``
        removes the hooks).

        Args:
            module: the network: an ``nn.Module`` or a tensordict ``TensorDictModule`` (its
                ``module``, ``in_keys`` and ``out_keys`` are used).
            in_keys: the record keys of the model's input: one key (default ``["input"]``), or a
                dict ``{record key: keyword}`` for ``model(**keywords)``.
            out_keys: where the output goes (default ``["output"]``; several keys for a tuple
                output).
        """
        context = HookingContext(self, module, in_keys, out_keys, **self._hooking_context_kwargs)
        if return_context:
            return context
        return context._enter(managed=False)

    # What a method does; the base hooks nothing and runs the model once.
    def _hook(self, context: HookingContext) -> HookGroup:
        return HookGroup()

    def _run(self, context: HookingContext, data: Any) -> Any:
        return context._forward(data)


class HookingContext:
    """A prepared method on a model; ``with context as hooked`` installs its hooks and yields a
    :class:`HookedModule`; leaving the block removes them, also on error."""

    def __init__(self, factory: HookingContextFactory, module: nn.Module, in_keys: Any = None,
                 out_keys: Any = None, *, cache: Any = None, clear_cache: bool = True) -> None:
        if TensorDictModuleBase is not None and isinstance(module, TensorDictModuleBase) \
                and isinstance(getattr(module, "module", None), nn.Module):
            in_keys = list(module.in_keys) if in_keys is None else in_keys
            out_keys = list(module.out_keys) if out_keys is None else out_keys
            module = module.module
        if not isinstance(module, nn.Module):
            raise InvalidParameterError(
                f"module must be a torch.nn.Module (or a TensorDictModule); got "
                f"{type(module).__name__}.")
        self._factory = factory
        self.module = module
        self.in_keys = _check_in_keys(in_keys)
        self.out_keys = _check_out_keys(out_keys)
        self._access = ModelAccess(module, head=None)
        self._cache = _new_cache() if cache is None else cache
        if not (_is_record(self._cache)):
            raise InvalidParameterError(
                f"cache must be None, a TensorDict or a dict; got {type(cache).__name__}.")
        self._clear_cache = clear_cache
        self._group: HookGroup | None = None
        self._managed = False

    @property
    def in_context(self) -> bool:
        return self._group is not None

    @property
    def cache(self) -> Any:
        """What :class:`ActivationCaching` stored (a TensorDict, or a dict without tensordict)."""
        return self._cache

    def clear(self) -> None:
        """Empty the cache."""
        self._cache.clear()

    def _enter(self, managed: bool) -> HookedModule:
        if self.in_context:
            raise LatentSurgeonError("Cannot enter a tdhook context twice; leave it first.")
        if self._clear_cache:
            self.clear()
        self._group = self._factory._hook(self)
        self._managed = managed
        return HookedModule(self)

    def __enter__(self) -> HookedModule:
        return self._enter(managed=True)

    def __exit__(self, *exc: object) -> None:
        self._exit()

    def _exit(self) -> None:
        if self._group is not None:
            self._group.remove()
        self._group = None

    @contextmanager
    def disable_hooks(self) -> Iterator[None]:
        """Run without the method's hooks inside this block; they come back afterwards."""
        if not self.in_context:
            raise LatentSurgeonError("disable_hooks() works inside the context only.")
        self._group.remove()
        try:
            yield
        finally:
            self._group = self._factory._hook(self)

    # -- calling the model -----------------------------------------------------------------------
    def _inputs(self, data: Any, prefix: Any = None) -> Any:
        def key(k: Any) -> Any:
            return k if prefix is None else (*_path(prefix), *_path(k))

        if isinstance(self.in_keys, Mapping):
            return {word: _get(data, key(k)) for k, word in self.in_keys.items()}
        return _get(data, key(self.in_keys[0]))

    def _call(self, inputs: Any) -> Any:
        return self._access.call(inputs)

    def _store_output(self, data: Any, output: Any, prefix: Any = None) -> None:
        keys = [k if prefix is None else (*_path(prefix), *_path(k)) for k in self.out_keys]
        if len(keys) == 1:
            _set(data, keys[0], output)
            return
        if not isinstance(output, (tuple, list)) or len(output) != len(keys):
            raise ShapeMismatchError(
                f"out_keys {self.out_keys} need a tuple of {len(keys)} outputs; the model "
                f"returned {type(output).__name__}.")
        for k, value in zip(keys, output, strict=True):
            _set(data, k, value)

    def _forward(self, data: Any) -> Any:
        """One model call on a record (outputs written into it) or on a plain input."""
        if not _is_record(data):
            return self._call(data)
        self._store_output(data, self._call(self._inputs(data)))
        return data


def _check_in_keys(in_keys: Any) -> list[Any] | dict[Any, str]:
    if in_keys is None:
        return ["input"]
    if isinstance(in_keys, Mapping) and in_keys and all(isinstance(v, str)
                                                        for v in in_keys.values()):
        return dict(in_keys)
    if isinstance(in_keys, (list, tuple)) and len(in_keys) == 1:
        return list(in_keys)
    raise InvalidParameterError(
        "in_keys must be None (['input']), a list of one key, or a dict {key: keyword} for "
        f"model(**keywords); got {in_keys!r}. Several positional inputs are not supported: "
        "name them in a dict.")


def _check_out_keys(out_keys: Any) -> list[Any]:
    if out_keys is None:
        return ["output"]
    if isinstance(out_keys, (list, tuple)) and out_keys and not isinstance(out_keys[0], int):
        return list(out_keys)
    raise InvalidParameterError(
        f"out_keys must be None (['output']) or a non-empty list of keys; got {out_keys!r}.")


class HookedModule:
    """The model inside a context: call it with a record (TensorDict or dict; the outputs are
    written into it and it is returned) or with plain inputs (the output is returned)."""

    def __init__(self, context: HookingContext) -> None:
        self._context = context

    @property
    def hooking_context(self) -> HookingContext:
        return self._context

    @property
    def module(self) -> nn.Module:
        return self._context.module

    @property
    def in_keys(self) -> Any:
        return self._context.in_keys

    @property
    def out_keys(self) -> list[Any]:
        return self._context.out_keys

    def __call__(self, *data: Any) -> Any:
        if not self._context.in_context:
            raise LatentSurgeonError(
                "This hooked module was prepared in a context that has been left; call it "
                "inside the `with ... as hooked:` block.")
        if len(data) != 1:
            return self._context._factory._run(self._context, data)
        return self._context._factory._run(self._context, data[0])

    def restore(self) -> None:
        """Remove the hooks of a module prepared with ``return_context=False``."""
        if self._context._managed:
            raise LatentSurgeonError("restore() is for prepare(return_context=False); this "
                                     "context is managed by its `with` block.")
        if not self._context.in_context:
            raise LatentSurgeonError("restore(): the context is not active.")
        self._context._exit()

    @contextmanager
    def disable_context_hooks(self) -> Iterator[None]:
        with self._context.disable_hooks():
            yield


# -- hook adapters: tdhook's callback arguments from our hook functions ----------------------------
def _register_all(model: nn.Module, names: Mapping[str, str], directions: Sequence[str],
                  deliver: Callable[..., None]) -> HookGroup:
    """One :class:`HookGroup` with ``deliver`` registered in every direction (all or none: a
    failure removes what was registered)."""
    group = HookGroup()
    try:
        for direction in directions:
            _register(group, model, names, direction, deliver)
    except BaseException:
        group.remove()
        raise
    return group


def _register(group: HookGroup, model: nn.Module, names: Mapping[str, str], direction: str,
              deliver: Callable[..., None]) -> None:
    """Register ``deliver(key, direction, **tdhook_params)`` for each ``{key: name}`` in
    ``direction``, all through the one hook mechanism (``bwd_pre`` is read from the full
    backward hook's ``grad_output``, the same tensors a backward pre-hook sees)."""
    by_name = {name: key for key, name in names.items()}
    layers = list(by_name)
    if direction == "fwd":
        group.forward(model, layers, lambda name, m, args, out: deliver(
            by_name[name], direction, module=m, args=args, output=out))
    elif direction == "fwd_pre":
        group.forward_pre(model, layers, lambda name, m, args: deliver(
            by_name[name], direction, module=m, args=args))
    elif direction == "bwd":
        group.backward(model, layers, lambda name, m, gin, gout: deliver(
            by_name[name], direction, module=m, grad_input=gin, grad_output=gout))
    else:
        group.backward(model, layers, lambda name, m, gin, gout: deliver(
            by_name[name], direction, module=m, grad_output=gout))


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for item in value:
            if isinstance(item, torch.Tensor):
                return item
    return None


# -- the methods ---------------------------------------------------------------------------------
class _KeyPatternFactory(HookingContextFactory):
    """A method that hooks the modules its ``key_pattern`` selects (checked when set)."""

    _key_pattern: str

    @property
    def key_pattern(self) -> str:
        return self._key_pattern

    @key_pattern.setter
    def key_pattern(self, key_pattern: str) -> None:
        key_pattern_selector(key_pattern)
        self._key_pattern = key_pattern


class ActivationCaching(_KeyPatternFactory):
    """Store what the modules matching ``key_pattern`` produce (tdhook's ``ActivationCaching``).

    Args:
        key_pattern: a regex matched at the start of module names (``"linear1"`` also matches
            ``"linear10"``; anchor with ``$``).
        relative: keys relative to the model (``"linear2"``); ``False``: tdhook's wrapped names
            (``"td_module.module.linear2"``).
        cache: the TensorDict (or dict) to store into; default a new one per context.
        callback: ``callback(module, args, output, key, direction)`` (``fwd``; the other
            directions get their own values, see ``DIRECTIONS``) returning the value to store.
        directions: some of ``"fwd"``, ``"fwd_pre"`` (inputs), ``"bwd"`` (gradients w.r.t. the
            inputs), ``"bwd_pre"`` (gradients w.r.t. the outputs); default ``["fwd"]``.
        use_nested_keys: store under ``(direction, key)`` (always with several directions).
        clear_cache: empty the cache when a context is entered.

    Without a callback the stored value is the primary tensor: the output, the first input or
    the first gradient (tdhook refuses the tuples of ``fwd_pre``/``bwd``/``bwd_pre`` there).
    With a TensorDict or dict input, a copy of the cache is also written under ``"cache"``.
    """

    def __init__(self, key_pattern: str, relative: bool = True, cache: Any = None,
                 callback: Callable | None = None, directions: list[str] | None = None,
                 use_nested_keys: bool = False, clear_cache: bool = True) -> None:
        super().__init__()
        key_pattern_selector(key_pattern)
        _check_callable(callback, "callback", "callback(module, args, output, key, direction)")
        if cache is not None and not _is_record(cache):
            raise InvalidParameterError(
                f"cache must be None, a TensorDict or a dict; got {type(cache).__name__}.")
        self._key_pattern = key_pattern
        self._relative = bool(relative)
        self._callback = callback
        self._directions = _check_directions(directions)
        self._use_nested_keys = bool(use_nested_keys) or len(self._directions) > 1
        self._hooking_context_kwargs = {"cache": cache, "clear_cache": bool(clear_cache)}

    def _hook(self, context: HookingContext) -> HookGroup:
        names = _matched_names(context.module, self._key_pattern, self._relative)
        copy = any(getattr(m, "inplace", False) is True for m in context.module.modules())

        def deliver(key: str, direction: str, **params: Any) -> None:
            where = (direction, key) if self._use_nested_keys else key
            if self._callback is not None:
                value = self._callback(**params, key=where, direction=direction)
            else:
                value = _first_tensor(params[_VALUE[direction]])
                # A later in-place op (ReLU(inplace=True)) would overwrite a stored output.
                if value is not None and copy and direction in ("fwd", "fwd_pre"):
                    value = value.clone()
            if not isinstance(value, torch.Tensor) and not _is_record(value):
                raise LatentSurgeonError(
                    f"ActivationCaching: the value to cache at {where!r} is a "
                    f"{type(value).__name__}; the callback must return a tensor or a "
                    "TensorDict.")
            _set(context.cache, where, value)

        return _register_all(context.module, names, self._directions, deliver)

    def _run(self, context: HookingContext, data: Any) -> Any:
        result = context._forward(data)
        if _is_record(result):
            _set(result, "cache", _copy_cache(context.cache, result))
        return result


class Probing(_KeyPatternFactory):
    """Feed what the matching modules produce to probes (tdhook's ``Probing``): at every call,
    ``probe.step(value, **extra)`` for the probe ``probe_factory(key, direction)`` made for
    each matched module when the context is entered; ``extra`` holds ``additional_keys`` read
    from the input record (``labels``, ``step_type``...).

    Args:
        key_pattern, relative, directions: as :class:`ActivationCaching`.
        probe_factory: ``probe_factory(key, direction) -> probe`` with ``step(data, **kwargs)``
            (e.g. :meth:`ProbeManager.probe_factory`).
        additional_keys: keys of the input record passed to ``step`` as keywords.
        classes_to_hook, classes_to_skip: module classes to keep / leave out (default: every
            module but ``Sequential``, ``ModuleList`` and TensorDict modules).

    The value is what tdhook passes: the output (``fwd``), the input tuple (``fwd_pre``) or the
    gradient tuples (``bwd``: w.r.t. the inputs, ``bwd_pre``: w.r.t. the outputs).
    """

    default_classes_to_hook: tuple[type, ...] = (nn.Module,)
    default_classes_to_skip: tuple[type, ...] = (nn.ModuleList, nn.Sequential) + (
        (TensorDictModuleBase,) if TensorDictModuleBase is not None else ())

    def __init__(self, key_pattern: str, probe_factory: Callable[[str, str], Any],
                 relative: bool = True, directions: list[str] | None = None,
                 additional_keys: list[str] | None = None,
                 classes_to_hook: list[type] | None = None,
                 classes_to_skip: list[type] | None = None) -> None:
        super().__init__()
        key_pattern_selector(key_pattern)
        if not callable(probe_factory):
            raise InvalidParameterError(
                f"probe_factory must be a function probe_factory(key, direction) -> probe; got "
                f"{probe_factory!r}.")
        if additional_keys is not None and (isinstance(additional_keys, str)
                                            or not isinstance(additional_keys, Sequence)):
            raise InvalidParameterError(
                f"additional_keys must be None or a list of keys; got {additional_keys!r}.")
        self._key_pattern = key_pattern
        self._probe_factory = probe_factory
        self._relative = bool(relative)
        self._directions = _check_directions(directions)
        self._additional_keys = None if additional_keys is None else list(additional_keys)
        self._classes_to_hook = _classes(classes_to_hook, self.default_classes_to_hook,
                                         "classes_to_hook")
        self._classes_to_skip = _classes(classes_to_skip, self.default_classes_to_skip,
                                         "classes_to_skip")
        self._extra: dict[str, Any] = {}

    def _hook(self, context: HookingContext) -> HookGroup:
        names = _matched_names(context.module, self._key_pattern, self._relative,
                               self._classes_to_hook, self._classes_to_skip)
        probes = {(key, d): self._probe_factory(key, d) for d in self._directions for key in names}

        def deliver(key: str, direction: str, **params: Any) -> None:
            probes[key, direction].step(params[_VALUE[direction]], **self._extra)

        return _register_all(context.module, names, self._directions, deliver)

    def _run(self, context: HookingContext, data: Any) -> Any:
        if self._additional_keys is not None:
            if not _is_record(data):
                raise InvalidParameterError(
                    f"Probing with additional_keys={self._additional_keys} needs a TensorDict "
                    f"or dict input holding them; got a {type(data).__name__}.")
            self._extra = {k: _get(data, k, "the probing input") for k in self._additional_keys}
        try:
            return context._forward(data)
        finally:
            self._extra = {}


def _classes(value: Any, default: tuple[type, ...], argument: str) -> tuple[type, ...]:
    if value is None or (isinstance(value, (list, tuple)) and not value):
        return default
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(c, type) and issubclass(c, nn.Module) for c in value):
        raise InvalidParameterError(
            f"{argument} must be None or a list of nn.Module classes; got {value!r}.")
    return tuple(value)


class SteeringVectors(HookingContextFactory):
    """Replace the outputs of ``modules_to_steer`` by ``steer_fn(module_key=, output=)`` at
    every call (tdhook's ``SteeringVectors``), through :class:`~latentsurgeon.intervene.
    SteeringVector` with that function as its ``steer_fn``. ``steer_fn`` may change ``output``
    in place and return it; returning None keeps the output."""

    def __init__(self, modules_to_steer: list[str], steer_fn: Callable) -> None:
        super().__init__()
        self._modules_to_steer = _module_list(modules_to_steer, "modules_to_steer")
        if not callable(steer_fn):
            raise InvalidParameterError(
                f"steer_fn must be a function steer_fn(module_key, output) -> output; got "
                f"{steer_fn!r}.")
        self._steer_fn = steer_fn

    def _hook(self, context: HookingContext) -> HookGroup:
        keys = {_module_name(context.module, k, "modules_to_steer"): k
                for k in self._modules_to_steer}

        def steer(name: str, activation: torch.Tensor, vector: torch.Tensor,
                  alpha: float) -> torch.Tensor:
            new = self._steer_fn(module_key=keys[name], output=activation)
            return activation if new is None else new

        # The vectors are unused: tdhook's steer_fn computes the new output itself.
        vectors = {name: torch.zeros(()) for name in keys}
        return SteeringVector.from_vectors(vectors, steer_fn=steer).attach(context.module)


class ActivationPatching(HookingContextFactory):
    """Patch the activations of ``modules_to_patch`` from the clean run into the run of
    ``(patch_key, "input")`` (tdhook's ``ActivationPatching``), by
    :func:`latentsurgeon.intervene.patch` with every listed module patched together.

    Each call reads ``"input"`` (clean) and ``(patch_key, "input")``, and writes ``"output"``
    (the clean output) and ``(patch_key, "output")`` (the patched run's output). Plain tensors:
    ``hooked(clean, patched)`` returns ``(output, patched_output)``.

    Args:
        modules_to_patch: module names (``named_modules()``; tdhook's ``layers[0]`` is
            ``layers.0``).
        patch_key: the record key of the run to patch.
        clean_intermediate_keys: accepted; no intermediate keys are written either way.
        patch_fn: ``patch_fn(module_key, output, output_to_patch) -> new_output`` where
            ``output`` is the patched run's activation and ``output_to_patch`` the clean one;
            None (or returning None) uses the clean activation.
        cache_callback: must be None (see ``docs/compat.md``).
    """

    def __init__(self, modules_to_patch: list[str], patch_key: Any = "patched",
                 clean_intermediate_keys: bool = True, patch_fn: Callable | None = None,
                 cache_callback: Callable | None = None) -> None:
        super().__init__()
        self._modules_to_patch = _module_list(modules_to_patch, "modules_to_patch")
        _check_callable(patch_fn, "patch_fn", "patch_fn(module_key, output, output_to_patch)")
        _refuse_cache_callback(cache_callback, "ActivationPatching")
        self._patch_key = patch_key
        self._clean_intermediate_keys = clean_intermediate_keys
        self._patch_fn = patch_fn

    def _run(self, context: HookingContext, data: Any) -> Any:
        model = context.module
        keys = {_module_name(model, k, "modules_to_patch"): k for k in self._modules_to_patch}
        if _is_record(data):
            clean = context._inputs(data)
            corrupted = context._inputs(data, prefix=self._patch_key)
        elif isinstance(data, tuple) and len(data) == 2:
            clean, corrupted = data
        else:
            raise InvalidParameterError(
                "ActivationPatching's hooked module takes a record with 'input' and "
                f"({self._patch_key!r}, 'input'), or two inputs hooked(clean, patched); got "
                f"{type(data).__name__}.")

        def adapted(name: str, target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
            return self._patch_fn(module_key=keys[name], output=target, output_to_patch=source)

        result = patch(model, list(keys), clean, corrupted, lambda output: output,
                       patch_fn=adapted if self._patch_fn is not None else None,
                       per_layer=False, progress=False)
        # patch() reports float64 CPU values; tdhook's outputs are in the model's dtype and place
        like = {"dtype": context._access.dtype or torch.float32, "device": context._access.device}
        clean_out = result.clean_raw.to(**like)
        (patched,) = (v.to(**like) for v in result.patched_raw.values())
        if not _is_record(data):
            return clean_out, patched
        context._store_output(data, clean_out)
        context._store_output(data, patched, prefix=self._patch_key)
        return data


class ActivationAddition(HookingContextFactory):
    """Steering vectors from a positive and a negative input (tdhook's ``ActivationAddition``):
    each call reads ``(positive_key, "input")`` and ``(negative_key, "input")`` and returns a
    record holding ``(steer_key, module_key)`` = mean over samples of ``activation(positive) -
    activation(negative)`` per module, by :class:`latentsurgeon.intervene.ActivationAddition`
    (per position: ``(D,)`` for ``(N, D)`` outputs, ``(T, D)`` for ``(N, T, D)``). Plain
    tensors: ``hooked(positive, negative)`` returns ``{module_key: vector}``.

    ``clean_intermediate_keys`` is accepted (nothing intermediate is written); ``cache_callback``
    must be None.
    """

    def __init__(self, modules_to_steer: list[str], positive_key: Any = "positive",
                 negative_key: Any = "negative", steer_key: Any = "steer",
                 clean_intermediate_keys: bool = True,
                 cache_callback: Callable | None = None) -> None:
        super().__init__()
        self._modules_to_steer = _module_list(modules_to_steer, "modules_to_steer")
        _refuse_cache_callback(cache_callback, "ActivationAddition")
        self._positive_key = positive_key
        self._negative_key = negative_key
        self._steer_key = steer_key
        self._clean_intermediate_keys = clean_intermediate_keys

    def _run(self, context: HookingContext, data: Any) -> Any:
        model = context.module
        keys = {_module_name(model, k, "modules_to_steer"): k for k in self._modules_to_steer}
        if _is_record(data):
            positive = context._inputs(data, prefix=self._positive_key)
            negative = context._inputs(data, prefix=self._negative_key)
        elif isinstance(data, tuple) and len(data) == 2:
            positive, negative = data
        else:
            raise InvalidParameterError(
                "ActivationAddition's hooked module takes a record with "
                f"({self._positive_key!r}, 'input') and ({self._negative_key!r}, 'input'), or "
                f"two inputs hooked(positive, negative); got {type(data).__name__}.")
        fitted = _ActivationAddition(list(keys), token="none").fit(model, positive, negative)
        vectors = {keys[name]: vector for name, vector in fitted.vectors_.items()}
        if not _is_record(data):
            return vectors
        out = _new_cache() if TensorDictBase is not None and isinstance(data, TensorDictBase) \
            else {}
        for key, vector in vectors.items():
            _set(out, (*_path(self._steer_key), key), vector)
        return out


def _refuse_cache_callback(cache_callback: Any, owner: str) -> None:
    if cache_callback is not None:
        raise InvalidParameterError(
            f"{owner}: cache_callback must be None here; got {cache_callback!r}. The cached "
            "activations are latentsurgeon's own (intervene.patch / ActivationAddition); "
            "transform them in patch_fn instead (see docs/compat.md).")


# -- probes ----------------------------------------------------------------------------------------
class MeanDifferenceClassifier:
    """tdhook's mean-difference probe: ``coef_ = mean(X | y=1) - mean(X | y=0)`` (unit length
    with ``normalize``), ``intercept_`` placing the decision boundary at the midpoint of the
    class means, by :class:`latentsurgeon.concepts.CAV` (``"mass_mean"``, ``pooling="none"``,
    ``zero_direction="keep"``): 2 + 2 samples fit, and coinciding class means give a zero
    ``coef_`` with probability 0.5 everywhere.

    ``fit(X, y)``: ``X`` ``(N, D)``, ``y`` ``(N,)`` 0/1 (arrays or tensors); ``predict(X)``:
    ``(N,)`` bool; ``predict_proba(X)``: ``(N, 2)``, the sigmoid of the decision value.
    """

    def __init__(self, normalize: bool = True) -> None:
        self._normalize = normalize
        self._cav: CAV | None = None
        self._scale = 1.0

    def fit(self, X: Any, y: Any) -> MeanDifferenceClassifier:
        labels = np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y)
        if labels.ndim > 1:
            raise InvalidParameterError(
                f"y must be (N,) binary labels (multiclass classification is not supported); "
                f"got shape {labels.shape}.")
        if set(np.unique(labels).tolist()) - {0, 1} or len(np.unique(labels)) < 2:
            raise InvalidParameterError(
                f"y must hold both classes 0 and 1; got the values {np.unique(labels).tolist()}.")
        acts = torch.as_tensor(np.asarray(X.cpu() if isinstance(X, torch.Tensor) else X))
        cav = CAV("mass_mean", pooling="none", zero_direction="keep").fit(acts, labels)
        self._cav = cav
        # the un-normalised coefficient is the difference of the means itself
        self._scale = 1.0 if self._normalize else float(
            (cav.mean_concept_ - cav.mean_clean_).double().norm())
        return self

    def _fitted(self) -> CAV:
        if self._cav is None:
            raise LatentSurgeonError("MeanDifferenceClassifier: model not fitted; call fit.")
        return self._cav

    @property
    def coef_(self) -> np.ndarray:
        """``(1, D)``."""
        cav = self._fitted()
        return (cav.direction_.double().numpy() * self._scale).reshape(1, -1)

    @property
    def intercept_(self) -> np.ndarray:
        """``(1,)``."""
        return np.array([-self._fitted().threshold_ * self._scale])

    def _decision_function(self, X: Any) -> np.ndarray:
        cav = self._fitted()
        acts = torch.as_tensor(np.asarray(X.cpu() if isinstance(X, torch.Tensor) else X))
        return (cav.project(acts.double()).numpy() - cav.threshold_) * self._scale

    def predict(self, X: Any) -> np.ndarray:
        return self._decision_function(X) > 0

    def predict_proba(self, X: Any) -> np.ndarray:
        positive = 1.0 / (1.0 + np.exp(-self._decision_function(X)))
        return np.stack([1.0 - positive, positive], axis=1)


class Probe:
    """tdhook's probe: ``step(data, labels=, step_type=)`` flattens ``data`` per sample
    (detached), then fits (``step_type="fit"``) or predicts (``"predict"``) with ``estimator``
    and hands the predictions and labels to the callbacks."""

    def __init__(self, estimator: Any, predict_callback: Callable[[Any, Any], Any],
                 fit_callback: Callable[[Any, Any], Any] | None = None,
                 data_preprocess_callback: Callable[[Any], Any] | None = None) -> None:
        self._estimator = estimator
        self._predict_callback = predict_callback
        self._fit_callback = fit_callback
        self._preprocess = data_preprocess_callback or (lambda d: d.detach().flatten(1))

    def step(self, data: Any, **kwargs: Any) -> None:
        labels, step_type = kwargs.get("labels"), kwargs.get("step_type")
        if step_type not in ("fit", "predict"):
            raise InvalidParameterError(
                f"step_type must be 'fit' or 'predict'; got {step_type!r}.")
        data = self._preprocess(data)
        if step_type == "fit":
            self._estimator.fit(data, y=labels)
            if self._fit_callback is not None:
                self._fit_callback(self._estimator.predict(data), labels)
        else:
            self._predict_callback(self._estimator.predict(data), labels)


class ProbeManager:
    """One estimator per probed module and direction (keys ``f"{key}_{direction}"``), with the
    metrics of its fit and predict steps (tdhook's ``ProbeManager``)."""

    def __init__(self, estimator_class: Any, estimator_kwargs: dict,
                 compute_metrics: Callable[[Any, Any], dict[str, Any]],
                 allow_overwrite: bool = False,
                 data_preprocess_callback: Callable[[Any], Any] | None = None) -> None:
        self._estimator_class = estimator_class
        self._estimator_kwargs = dict(estimator_kwargs)
        self._compute_metrics = compute_metrics
        self._allow_overwrite = allow_overwrite
        self._preprocess = data_preprocess_callback
        self.reset_estimators()
        self.reset_metrics()

    @property
    def estimators(self) -> dict[str, Any]:
        return self._estimators

    @property
    def fit_metrics(self) -> dict[str, Any]:
        return self._fit_metrics

    @property
    def predict_metrics(self) -> dict[str, Any]:
        return self._predict_metrics

    def probe_factory(self, key: str, direction: str) -> Probe:
        name = f"{key}_{direction}"
        if name in self._estimators and not self._allow_overwrite:
            raise LatentSurgeonError(
                f"Probe {name} already exists: call reset_estimators() or pass "
                "allow_overwrite=True.")
        estimator = self._estimator_class(**self._estimator_kwargs)
        self._estimators[name] = estimator

        def record(which: str) -> Callable[[Any, Any], None]:
            def callback(predictions: Any, labels: Any) -> None:
                table = getattr(self, which)  # looked up now: reset_metrics() replaces it
                if name in table and not self._allow_overwrite:
                    raise LatentSurgeonError(
                        f"Metrics for {name} already exist: call reset_metrics() or pass "
                        "allow_overwrite=True.")
                table[name] = self._compute_metrics(predictions, labels)
            return callback

        return Probe(estimator, record("_predict_metrics"), record("_fit_metrics"),
                     self._preprocess)

    def reset_estimators(self) -> None:
        self._estimators: dict[str, Any] = {}

    def reset_metrics(self) -> None:
        self._fit_metrics: dict[str, Any] = {}
        self._predict_metrics: dict[str, Any] = {}
