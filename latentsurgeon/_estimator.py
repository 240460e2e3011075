"""The estimator contract shared by every fitted object (scikit-learn's, completely), and the one
save/load scheme.

* The constructor stores each parameter under its own name, unchanged; nothing is checked there.
* ``get_params(deep=True)`` reads the parameter names from the constructor's signature;
  ``set_params(**params)`` sets them (``cav__method=...`` reaches a nested estimator);
  ``sklearn.base.clone`` therefore works and gives an unfitted copy.
* Parameters are validated against ``_parameter_constraints`` (see
  :mod:`latentsurgeon._validation`) when ``fit`` runs: subclasses call
  :meth:`Estimator._validate_params` first thing in ``fit``.
* ``fit`` returns ``self``; learned state ends in ``_``; ``save``/``load`` round-trip it.

Saving (one policy for every estimator). ``save(path, exclude=())`` writes one ``torch.save``
file (atomically; ``load`` reads it with ``weights_only=True``) holding the class, the
parameters, the learned state and the class's extra state (:meth:`Estimator._extra_state`):

* parameters that are **data** are stored: None, strings, bools, numbers, ``torch.device``,
  ``pathlib.Path``, slices, enums (by value), tensors and arrays, a ``torch.Generator`` (its
  state at save time), and lists, tuples and dicts of these;
* a parameter that is an **estimator** (a CAV given to a ClArC) is stored recursively (its
  parameters and learned state) and rebuilt by ``load``;
* a parameter that is **code** (a function, a module, an optimizer callable, any other object)
  is refused: ``save`` raises :class:`~latentsurgeon.errors.InvalidParameterError` naming every
  such parameter and writes nothing. ``save(path, exclude=("criterion",))`` stores it as absent
  instead; give it again to ``load(path, criterion=...)``. An excluded parameter that ``load``
  is not given takes its constructor default, with a ``UserWarning`` naming it (a parameter
  without a default must be given).

Loading. ``Estimator.load(path)`` (or the family's base: ``Correction.load``,
``ExampleExplainer.load``) returns an object of the class stored in the file; ``PClarc.load(path)``
refuses a file holding another class. ``load(path, **params)`` overrides stored parameters
(``cav__C=`` reaches a nested estimator); classes that need live objects back, such as the
model of an example explainer, take them as further keywords (``_load_arguments``). Any other
keyword is an :class:`~latentsurgeon.errors.InvalidParameterError`. Classes are found by
``module:qualname`` among the subclasses of :class:`Estimator` defined in this process: a
latentsurgeon module is imported on demand, a module outside latentsurgeon never is (import the
module that defines the class first), so a file cannot make ``load`` import code.
"""

from __future__ import annotations

import importlib
import inspect
import numbers
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from enum import Enum
from pathlib import Path, PurePath
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch

from latentsurgeon._io import check_writable_file, torch_save_atomic
from latentsurgeon._validation import validate_params
from latentsurgeon.errors import InvalidParameterError, LatentSurgeonError, NotFittedError

E = TypeVar("E", bound="Estimator")
_FORMAT = "latentsurgeon-estimator/2"
#: the key that marks an encoded value (a nested estimator, a device, a generator, ...)
_MARK = "__latentsurgeon__"
#: ``"module:qualname" -> class`` of every Estimator subclass defined so far
_CLASSES: dict[str, type[Estimator]] = {}


def _class_key(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


class _Codec:
    """Turns values into what ``torch.load(weights_only=True)`` reads back, and back again.

    ``encode`` records in ``code`` the dotted path of every value that is code rather than data
    (it is stored as None and the caller refuses to save).
    """

    def __init__(self) -> None:
        self.code: list[tuple[str, str]] = []

    def encode(self, value: Any, where: str, exclude: Iterable[str] = ()) -> Any:
        """``value`` as stored; ``where`` names it in messages (``"cav"``, ``"cav__C"``);
        ``exclude``: the parameters of a nested estimator ``value`` to leave out."""
        # exact types only: a subclass (an enum that is also a str, numpy's float64) would be
        # pickled as its class, which torch.load(weights_only=True) refuses
        if value is None or type(value) in (str, bool, int, float, complex):
            return value
        if isinstance(value, Estimator):
            payload = value._payload(self, exclude, prefix=where, require_fitted=False)
            return {_MARK: "estimator", "payload": payload}
        if isinstance(value, Enum):
            return self.encode(value.value, where)  # the constructor takes the value
        if isinstance(value, torch.Tensor):
            return value.detach().as_subclass(torch.Tensor)
        if isinstance(value, np.ndarray):
            if value.dtype == object:
                self.code.append((where, "an object array"))
                return None
            return {_MARK: "ndarray", "data": torch.from_numpy(np.ascontiguousarray(value).copy())}
        if isinstance(value, np.generic):
            return self.encode(value.item(), where)
        if isinstance(value, str):
            return str.__str__(value)  # a str subclass as a plain str
        if isinstance(value, numbers.Integral):
            return int(value)
        if isinstance(value, numbers.Real):  # other real numbers (fractions): as floats
            return float(value)
        if isinstance(value, torch.device):
            return {_MARK: "device", "value": str(value)}
        if isinstance(value, PurePath):
            return {_MARK: "path", "value": str(value)}
        if isinstance(value, slice):
            return {_MARK: "slice", "value": [self.encode(v, where)
                                              for v in (value.start, value.stop, value.step)]}
        if isinstance(value, torch.Generator):
            return {_MARK: "generator", "device": str(value.device), "state": value.get_state()}
        if isinstance(value, Mapping) and _MARK not in value:
            out = {}
            for key, item in value.items():
                if not (key is None or isinstance(key, (str, int, float, bool))):
                    self.code.append((where, f"a dict with a {type(key).__name__} key"))
                    return None
                out[key] = self.encode(item, f"{where}[{key!r}]")
            return out
        if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
            items = [self.encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
            return items if isinstance(value, list) else tuple(items)
        self.code.append((where, _kind(value)))
        return None

    @staticmethod
    def decode(value: Any, overrides: Mapping[str, Any] | None = None) -> Any:
        if isinstance(value, dict):
            mark = value.get(_MARK)
            if mark == "estimator":
                return Estimator._from_payload(value["payload"], dict(overrides or {}), {},
                                               where="a nested estimator")
            if mark == "ndarray":
                return value["data"].numpy()
            if mark == "device":
                return torch.device(value["value"])
            if mark == "path":
                return Path(value["value"])
            if mark == "slice":
                return slice(*value["value"])
            if mark == "generator":
                generator = torch.Generator(device=value["device"])
                generator.set_state(value["state"])
                return generator
            return {k: _Codec.decode(v) for k, v in value.items()}
        if isinstance(value, list):
            return [_Codec.decode(v) for v in value]
        if isinstance(value, tuple):
            return tuple(_Codec.decode(v) for v in value)
        return value


def _kind(value: Any) -> str:
    if inspect.isfunction(value) or inspect.ismethod(value) or inspect.isbuiltin(value):
        return f"the function {getattr(value, '__qualname__', value)!r}"
    if isinstance(value, type):
        return f"the class {value.__qualname__}"
    if isinstance(value, torch.nn.Module):
        return f"a module {type(value).__name__}"
    return f"a {type(value).__name__}" + (" (callable)" if callable(value) else "")


def _read_payload(path: str | Path) -> dict[str, Any]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise LatentSurgeonError(f"Cannot load {path}: {exc}") from exc
    found = payload.get("format") if isinstance(payload, dict) else None
    family, _, version = str(found).partition("/")
    if family == _FORMAT.partition("/")[0] and found != _FORMAT:
        newer = version.isdigit() and int(version) > int(_FORMAT.partition("/")[2])
        raise LatentSurgeonError(
            f"{path} was saved by {'a newer' if newer else 'an older'} latentsurgeon (file "
            f"format {found!r}; this version reads {_FORMAT!r}); load it with the version that "
            "saved it" + (", or upgrade latentsurgeon." if newer else ", and save it again."))
    if found != _FORMAT:
        raise LatentSurgeonError(f"{path} is not a saved latentsurgeon estimator.")
    _check_payload(payload, str(path))
    return payload


def _check_payload(payload: Mapping[str, Any], where: str) -> None:
    expected = {"class": str, "params": dict, "excluded": list, "learned": dict, "extra": dict}
    for key, kind in expected.items():
        if not isinstance(payload.get(key), kind):
            raise LatentSurgeonError(
                f"{where} is damaged: its {key!r} entry is "
                f"{type(payload.get(key)).__name__}, not a {kind.__name__}.")


def _stored_class(key: str, where: str) -> type[Estimator]:
    """The Estimator subclass named ``module:qualname`` (see the module doc for the policy)."""
    if key not in _CLASSES:
        module = key.partition(":")[0]
        if module == "latentsurgeon" or module.startswith("latentsurgeon."):
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise LatentSurgeonError(
                    f"{where} holds a {key}, whose module cannot be imported: {exc}") from exc
    if key not in _CLASSES:
        raise LatentSurgeonError(
            f"{where} holds a {key}, which is not an Estimator class defined in this process "
            "(load() imports only latentsurgeon's own modules; import the module that defines "
            "the class first).")
    return _CLASSES[key]


@contextmanager
def _damaged(where: str) -> Iterator[None]:
    """Turn what a damaged (or another version's) file makes decoding raise into one error."""
    try:
        yield
    except LatentSurgeonError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
        raise LatentSurgeonError(
            f"{where} is damaged or does not fit this version of its class: "
            f"{type(exc).__name__}: {exc}") from exc


def _join(prefix: str, name: str) -> str:
    return f"{prefix}__{name}" if prefix else name


def _split_nested(values: Mapping[str, Any], names: Sequence[str],
                  refuse: Callable[[str], Exception]) -> tuple[dict[str, Any],
                                                               dict[str, dict[str, Any]]]:
    """``{"a": 1, "cav__C": 2}`` -> ``({"a": 1}, {"cav": {"C": 2}})``, the one reading of
    scikit-learn's ``name__sub`` keys (``set_params``, ``save(exclude=)``, ``load(**params)``);
    a key whose first part is not in ``names`` raises ``refuse(key)``."""
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        name, sep, sub = key.partition("__")
        if name not in names:
            raise refuse(key)
        if sep:
            nested.setdefault(name, {})[sub] = value
        else:
            top[name] = value
    return top, nested


def _names(names: str | Iterable[str], what: str) -> list[str]:
    if isinstance(names, str):
        return [names]
    try:
        out = list(names)
    except TypeError:
        out = None
    if out is None or not all(isinstance(n, str) for n in out):
        raise InvalidParameterError(
            f"{what} must be a parameter name or a sequence of them; got {names!r}.")
    return out


class Estimator:
    """Base class: the constructor stores parameters only; ``fit`` sets attributes ending in ``_``.

    ``save(path, exclude=())`` and ``load(path, **params)`` follow the module's policy. Classes
    with state beyond their parameters and public learned attributes (an ``nn.Module``'s
    weights, an explainer's training gradients) override :meth:`_extra_state` and
    :meth:`_restore_extra_state`; classes that store a parameter differently (a layer selector
    stored as the layers it resolved to) override :meth:`_params_to_save`.
    """

    #: ``{parameter: constraint or [constraints]}``, checked by :meth:`_validate_params`.
    _parameter_constraints: ClassVar[dict[str, Any]] = {}
    #: keywords of ``load`` that are not parameters but live objects handed to
    #: :meth:`_restore_extra_state` (e.g. ``("model",)``)
    _load_arguments: ClassVar[tuple[str, ...]] = ()
    #: set in a class's own body: ``ThatClass.load`` also loads files of its subclasses
    _loads_subclasses: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _CLASSES[_class_key(cls)] = cls

    @classmethod
    def _get_param_names(cls) -> list[str]:
        init = cls.__init__
        if init is object.__init__:
            return []
        params = inspect.signature(init).parameters.values()  # follows @aliased's __wrapped__
        return [p.name for p in params if p.name != "self"
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor parameters, ``{name: value}``; with ``deep``, also
        ``{name__sub: value}`` for parameters that are estimators themselves."""
        out: dict[str, Any] = {}
        for name in self._get_param_names():
            if not hasattr(self, name):
                raise LatentSurgeonError(
                    f"{type(self).__name__} does not store its constructor parameter {name!r} "
                    "under that name; every estimator must (scikit-learn's contract).")
            value = getattr(self, name)
            if deep and hasattr(value, "get_params") and not isinstance(value, type):
                out.update({f"{name}__{k}": v for k, v in value.get_params().items()})
            out[name] = value
        return out

    def set_params(self: E, **params: Any) -> E:
        """Set constructor parameters (``name__sub=`` for a nested estimator); returns self.

        Raises:
            InvalidParameterError: a name that is not a parameter of this estimator.
        """
        valid = self.get_params(deep=True)
        top, nested = _split_nested(params, list(valid), lambda key: InvalidParameterError(
            f"{type(self).__name__} has no parameter {key.partition('__')[0]!r}; its parameters "
            f"are {', '.join(self._get_param_names())}."))
        for name, value in top.items():
            setattr(self, name, value)
            valid[name] = value
        for name, sub_params in nested.items():
            valid[name].set_params(**sub_params)
        return self

    def _validate_params(self) -> None:
        """Check every parameter against ``_parameter_constraints`` (raises
        :class:`InvalidParameterError` naming the parameter, what it accepts and what it got)."""
        constraints: dict[str, Any] = {}
        for klass in reversed(type(self).__mro__):
            constraints.update(getattr(klass, "_parameter_constraints", {}) or {})
        validate_params(self.get_params(deep=False), constraints, owner=type(self).__name__)

    def learned_state(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items()
                if k.endswith("_") and not k.startswith("_") and not callable(v)}

    def is_fitted(self) -> bool:
        return bool(self.learned_state())

    def _check_fitted(self) -> None:
        if not self.is_fitted():
            raise NotFittedError(f"This {type(self).__name__} is not fitted yet; call fit() first.")

    # -- saving ----------------------------------------------------------------------------------
    def _params_to_save(self) -> dict[str, Any]:
        """The parameters as ``save`` stores them (override to store one differently)."""
        return self.get_params(deep=False)

    def _extra_state(self) -> dict[str, Any]:
        """State beyond the parameters and the learned attributes that ``load`` needs back
        (data only, as the parameters); raise a :class:`LatentSurgeonError` if the object holds
        state that cannot be stored, so ``save`` writes nothing."""
        return {}

    def _restore_extra_state(self, state: dict[str, Any], **arguments: Any) -> None:
        """Put back what :meth:`_extra_state` returned; ``arguments`` are the ``load`` keywords
        named in ``_load_arguments`` (absent ones are not passed)."""

    def _check_exclude(self, names: list[str], prefix: str = "") -> None:
        params = self._get_param_names()
        _, nested = _split_nested(dict.fromkeys(names), params, lambda key: InvalidParameterError(
            f"{type(self).__name__}.save: exclude names {_join(prefix, key)!r}, which is not a "
            f"parameter; its parameters are {', '.join(params)}."))
        for name, subs in nested.items():
            value = getattr(self, name)
            if not isinstance(value, Estimator):
                raise InvalidParameterError(
                    f"{type(self).__name__}.save: exclude names "
                    f"{_join(prefix, name + '__' + next(iter(subs)))!r}, but "
                    f"{_join(prefix, name)!r} is not an estimator with parameters of its own (it "
                    f"is {_kind(value)}).")
            value._check_exclude(list(subs), _join(prefix, name))

    def _payload(self, codec: _Codec, exclude: Iterable[str] = (), *, prefix: str = "",
                 require_fitted: bool = True) -> dict[str, Any]:
        """Everything ``save`` stores, encoded; code among the parameters lands in
        ``codec.code`` (the caller refuses)."""
        if require_fitted:
            self._check_fitted()
        exclude = list(exclude)
        own = {n for n in exclude if "__" not in n}
        params = {}
        for name, value in self._params_to_save().items():
            if name in own:
                continue
            sub = [n.partition("__")[2] for n in exclude if n.startswith(name + "__")]
            params[name] = codec.encode(value, _join(prefix, name), sub)
        internal = _Codec()
        learned = {k: internal.encode(v, k) for k, v in self.learned_state().items()}
        extra = {k: internal.encode(v, k) for k, v in self._extra_state().items()}
        if internal.code:
            where, kind = internal.code[0]
            raise LatentSurgeonError(
                f"{type(self).__name__}.save: its learned state {where!r} holds {kind}, which "
                "cannot be stored (a bug of this class; please report it).")
        return {"format": _FORMAT, "class": _class_key(type(self)), "params": params,
                "excluded": sorted(own), "learned": learned, "extra": extra}

    def save(self, path: str | Path, *, exclude: str | Iterable[str] = ()) -> None:
        """Save parameters, learned state and extra state (atomically: a crash or a refusal
        leaves any old file as it was).

        Args:
            path: the file.
            exclude: parameters not to store (``"criterion"``; ``"cav__C"`` for a parameter of
                a nested estimator); give them again to :meth:`load`. Parameters that are code
                must be excluded.

        Raises:
            NotFittedError: the estimator is not fitted.
            InvalidParameterError: a parameter holds code (each is named), ``exclude`` names
                a non-parameter, or ``path`` is a folder or lies in a missing one.
        """
        names = _names(exclude, "exclude")
        self._check_exclude(names)
        try:
            check_writable_file(path)
        except OSError as exc:
            raise InvalidParameterError(
                f"{type(self).__name__}.save: path must be a file in an existing folder; "
                f"{exc.filename} {exc.strerror}.") from exc
        codec = _Codec()
        payload = self._payload(codec, names)
        if codec.code:
            listed = "; ".join(f"{where} is {kind}" for where, kind in codec.code)
            refused = tuple(dict.fromkeys(where.partition("[")[0] for where, _ in codec.code))
            raise InvalidParameterError(
                f"{type(self).__name__}.save: parameters that are code are not stored ({listed}). "
                f"Pass save(path, exclude={refused!r}) and give them again to "
                f"{type(self).__name__}.load(path, {', '.join(f'{n}=...' for n in refused)}).")
        torch_save_atomic(payload, path)

    # -- loading ---------------------------------------------------------------------------------
    @classmethod
    def load(cls: type[E], path: str | Path, **params: Any) -> E:
        """Load an estimator saved by :meth:`save`.

        Args:
            path: the file.
            params: parameters replacing the stored ones (``name__sub=`` for a nested
                estimator's), the excluded ones in particular, and the class's
                ``_load_arguments`` (an example explainer's ``model``).

        Returns:
            An object of the stored class: ``Estimator.load`` (or a family's base class, e.g.
            ``Correction.load``) loads any estimator (of that family); a concrete class loads
            files of that class only.

        Raises:
            LatentSurgeonError: the file is missing, damaged, not a saved estimator, or holds
                another class.
            InvalidParameterError: a keyword that is neither a parameter nor a load argument.
        """
        payload = _read_payload(path)
        stored = _stored_class(payload["class"], str(path))
        family = cls.__dict__.get("_loads_subclasses", False) and issubclass(stored, cls)
        if stored is not cls and not family:
            raise LatentSurgeonError(
                f"{path} holds a {stored.__name__}, not a {cls.__name__}; "
                f"use {stored.__name__}.load().")
        arguments = {k: params.pop(k) for k in list(params) if k in stored._load_arguments}
        loaded = stored._from_payload(payload, params, arguments, where=str(path))
        return loaded  # type: ignore[return-value]

    @staticmethod
    def _from_payload(payload: dict[str, Any], overrides: dict[str, Any],
                      arguments: dict[str, Any], *, where: str) -> Estimator:
        _check_payload(payload, where)
        klass = _stored_class(payload["class"], where)
        names = klass._get_param_names()
        extra = (f"; load arguments: {', '.join(klass._load_arguments)}"
                 if klass._load_arguments else "")
        top, nested = _split_nested(overrides, names, lambda key: InvalidParameterError(
            f"{klass.__name__}.load: {key!r} is not a parameter of {klass.__name__} (its "
            f"parameters are {', '.join(names)}{extra})."))
        stored = payload["params"]
        unknown = [name for name in stored if name not in names]
        if unknown:
            raise LatentSurgeonError(
                f"{where} holds parameters {klass.__name__} does not have: "
                f"{', '.join(map(repr, unknown))} (its parameters are {', '.join(names)}); it "
                "was saved by another version of the class.")
        kwargs: dict[str, Any] = {}
        late: dict[str, Any] = {}
        with _damaged(where):
            for name, value in stored.items():
                if name in top:
                    continue
                is_nested = isinstance(value, dict) and value.get(_MARK) == "estimator"
                kwargs[name] = _Codec.decode(value, nested.pop(name, {}) if is_nested else None)
        for name, sub_params in nested.items():
            late.update({f"{name}__{k}": v for k, v in sub_params.items()})
        kwargs.update(top)
        missing = [n for n in payload["excluded"] if n not in kwargs]
        if missing:
            defaults = inspect.signature(klass.__init__).parameters
            required = [n for n in missing if n not in defaults
                        or defaults[n].default is inspect.Parameter.empty]
            if required:
                raise InvalidParameterError(
                    f"{klass.__name__}.load: {', '.join(required)} was excluded when {where} "
                    f"was saved and has no default; pass load(path, "
                    f"{', '.join(f'{n}=...' for n in required)}).")
        with _damaged(where):
            obj = klass(**kwargs)
        for key in late:
            name = key.partition("__")[0]
            if not isinstance(getattr(obj, name), Estimator):
                raise InvalidParameterError(
                    f"{klass.__name__}.load: {key!r} names a parameter of {name!r}, which is "
                    f"not an estimator (it is {_kind(getattr(obj, name))}).")
        if late:
            obj.set_params(**late)
        with _damaged(where):
            for key, value in payload["learned"].items():
                setattr(obj, key, _Codec.decode(value))
            obj._restore_extra_state(_Codec.decode(payload["extra"]), **arguments)
        if missing:  # warned once the load has succeeded
            warnings.warn(
                f"{klass.__name__}.load: {', '.join(missing)} was excluded when {where} was "
                "saved and not given to load(); the constructor default is used (pass "
                f"load(path, {', '.join(f'{n}=...' for n in missing)}) to give it back).",
                UserWarning, stacklevel=3)
        return obj

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params(deep=False).items())
        return f"{type(self).__name__}({params})"
