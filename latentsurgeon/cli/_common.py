"""What every command shares: loading the user's model, weights and data, and the shared flags.

The same flags mean the same thing in every command:

* ``--model pkg.mod:fn`` - a function returning an ``nn.Module`` (or a module attribute holding
  one); default: the reference ``DigitCNN``.
* ``--weights FILE`` - a ``state_dict`` (loaded with ``weights_only=True``) for that model. For the
  reference model without ``--weights`` the command trains it first (seconds); ``latentsurgeon
  train`` or ``latentsurgeon demo`` write a ``model.pt`` to pass here instead.
* ``--data decoy-watermark | decoy-swatch | pkg.mod:fn`` - the bundled decoy digits, or a function
  returning the user's data (see :func:`load_data`).
* ``--layer NAME`` where one layer is needed, ``--layers SEL ...`` where several are.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from latentsurgeon.errors import InvalidParameterError, LatentSurgeonError

BUNDLED = ("decoy-watermark", "decoy-swatch")
POOLINGS = ("max", "mean", "flatten", "none")
#: The pooling every activation-reading command uses unless told otherwise. ``max`` keeps a small
#: local artifact readable (a mean over the map dilutes a 3x3 watermark on a 16x16 image).
DEFAULT_POOLING = "max"


def load_object(spec: str, what: str = "--model") -> Any:
    """Import ``"package.module:attribute"``; call it (without arguments) if it is callable
    and not already a module instance. The current directory is importable."""
    if not isinstance(spec, str) or ":" not in spec:
        raise InvalidParameterError(
            f"{what} must look like 'package.module:function', got {spec!r}.")
    module_name, attr = spec.split(":", 1)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise LatentSurgeonError(f"{what}: cannot import {module_name!r}: {exc}") from exc
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise LatentSurgeonError(f"{what}: {module_name!r} has no attribute {attr!r}.") from None
    if callable(obj) and not isinstance(obj, nn.Module):
        try:
            obj = obj()
        except Exception as exc:
            raise LatentSurgeonError(f"{what}: calling {spec} failed: "
                                     f"{type(exc).__name__}: {exc}") from exc
    return obj


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(",") if s)
    except ValueError:
        shape = ()
    if not shape or any(s < 1 for s in shape):
        raise argparse.ArgumentTypeError(f"a shape like 1,1,16,16 is expected, got {text!r}")
    return shape


def _exported_layers(own: set[str], state: dict[str, Any]) -> list[str]:
    """The layers ``state`` holds as a P-ClArC export (``layer.0.*`` the original layer,
    ``layer.1.*`` its ClarcProjection's buffers), if renaming them back gives ``own``'s keys."""
    layers = sorted({key[: -len(".1.direction")] for key in state if key.endswith(".1.direction")})

    def original(key: str) -> str | None:
        for layer in layers:
            if key.startswith(layer + ".1."):
                return None
            if key.startswith(layer + ".0."):
                return layer + key[len(layer) + 2:]
        return key

    names = {original(key) for key in state} - {None}
    return layers if layers and names == own else []


def load_weights(model: nn.Module, path: str, flag: str = "--weights") -> nn.Module:
    """Load a ``state_dict`` file into ``model`` (strictly), with one-line errors naming
    ``flag`` (the command-line option the file came from)."""
    file = Path(path)
    if not file.is_file():
        raise LatentSurgeonError(f"{flag}: no file {path!r}.")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise LatentSurgeonError(
            f"{flag}: {path!r} is not a PyTorch state_dict file ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}).") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a checkpoint written by the training loop
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LatentSurgeonError(f"{flag}: {path!r} does not hold a state_dict (a dict of "
                                 "tensors) or a training checkpoint.")
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        exported = _exported_layers(set(own), state)
        if exported:
            what = (f"{flag}: {path!r} holds a P-ClArC export (layer {', '.join(exported)} "
                    f"followed by its projection), not the weights of a plain "
                    f"{type(model).__name__}")
            if flag == "--corrected":
                raise LatentSurgeonError(
                    f"{what}; verify needs the correction file `correct --save` wrote beside "
                    "it: pass --correction FILE.")
            raise LatentSurgeonError(
                f"{what}; pass it as `verify --corrected` (with the .correction.pt file beside "
                "it) and the uncorrected weights as --weights.")
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:4])}"
                         f"{' ...' if len(unexpected) > 4 else ''}")
        if wrong:
            parts.append(f"other shapes for {', '.join(wrong[:4])}")
        raise LatentSurgeonError(
            f"{flag}: {path!r} was saved from another architecture than "
            f"{type(model).__name__} ({'; '.join(parts)}). Pass the --model it belongs to.")
    model.load_state_dict(state)
    return model.eval()


def build_model(args: argparse.Namespace) -> nn.Module:
    """The ``--model`` (default: a fresh reference DigitCNN), without weights."""
    if getattr(args, "model", None):
        model = load_object(args.model, "--model")
        if not isinstance(model, nn.Module):
            raise LatentSurgeonError(
                f"--model {args.model} gave a {type(model).__name__}, not an nn.Module.")
        return model
    from latentsurgeon.models import DigitCNN

    torch.manual_seed(getattr(args, "seed", 0))
    return DigitCNN()


def load_data(spec: str, seed: int = 0) -> Any:
    """The data of ``--data``.

    ``decoy-watermark``/``decoy-swatch`` give the bundled decoy digits (``.train``, ``.test``,
    ``.poisoned`` splits). ``pkg.mod:fn`` may return: an object (or dict) with ``train`` (and
    ``test``, ``poisoned``) splits; a single split (an object or dict with ``images``, ``labels``,
    optionally ``artifact`` and ``masks``); a tuple ``(inputs, labels[, artifact])``; or an
    inputs tensor. Dicts become attribute objects.
    """
    if spec in BUNDLED:
        from latentsurgeon.data import decoy_digits

        return decoy_digits(spec.split("-", 1)[1], seed=seed)
    data = load_object(spec, "--data")
    if data is None or isinstance(data, (str, bytes, int, float, bool)):
        raise LatentSurgeonError(
            f"--data: {spec} returned {type(data).__name__} {data!r:.60}; expected an object or "
            "dict with train/test/poisoned splits, one split (images, labels[, artifact, "
            "masks]), a tuple (inputs, labels[, artifact]) or an inputs tensor.")
    return _attributes(data)


def _attributes(value: Any) -> Any:
    if isinstance(value, dict):
        return SimpleNamespace(**{k: _attributes(v) for k, v in value.items()})
    return value


def split_of(data: Any, name: str, *, what: str) -> Any:
    """One split (``train``, ``test``, ``poisoned``) of ``--data``; a data object without splits
    is its own train split."""
    if hasattr(data, name):
        return getattr(data, name)
    if name == "train" and not hasattr(data, "test"):
        if isinstance(data, torch.Tensor):
            return SimpleNamespace(images=data)
        if isinstance(data, (tuple, list)):
            keys = ("images", "labels", "artifact")
            return SimpleNamespace(**dict(zip(keys, data, strict=False)))
        return data
    if isinstance(data, torch.Tensor):
        has = f"is one tensor of shape {tuple(data.shape)}"
    elif hasattr(data, "__dict__"):
        has = f"has {sorted(k for k in vars(data) if not k.startswith('_'))}"
    else:
        has = f"is a {type(data).__name__}"
    raise LatentSurgeonError(
        f"{what} needs a {name!r} split in --data; the data {has}. Return a dict or object with "
        f"train/test/poisoned splits from your --data function.")


def need(split: Any, field: str, what: str) -> torch.Tensor:
    value = getattr(split, field, None)
    if value is None:
        raise LatentSurgeonError(f"{what} needs {field!r} in its --data split (e.g. artifact "
                                 "labels: 1 where the sample carries the shortcut).")
    return value if isinstance(value, torch.Tensor) else torch.as_tensor(value)


def analysed_model(args: argparse.Namespace, data: Any = None) -> nn.Module:
    """The model to analyse: ``--model`` (with ``--weights`` if given; without, as the function
    returned it, e.g. a model that loads its own weights); the reference CNN with ``--weights``;
    or, with neither, the reference CNN trained here on the train split."""
    model = build_model(args)
    if getattr(args, "weights", None):
        return load_weights(model, args.weights)
    if getattr(args, "model", None):
        return model.eval()
    from latentsurgeon.models import train_classifier

    train = split_of(data, "train", what="training the reference model")
    say(args, f"No --weights given: training the reference DigitCNN on {args.data} (seed "
              f"{args.seed}, {args.epochs} epochs; `latentsurgeon train --out model.pt` once "
              "and --weights model.pt skips this) ...")
    train_classifier(model, (train.images, train.labels), epochs=args.epochs, seed=args.seed,
                     progress=not args.quiet)
    return model


def say(args: argparse.Namespace, text: str) -> None:
    if not getattr(args, "quiet", False):
        print(text, file=sys.stderr)


def count(minimum: int) -> Any:
    """An argparse ``type=`` for an integer flag of at least ``minimum`` (a count, a size, a
    seed): a bad value is refused at parse time with the flag, the bound and the value."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer >= {minimum}; got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}; got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def finite_float(text: str) -> float:
    """An argparse ``type=`` for a real number flag: NaN and Inf are refused at parse time."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number; got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number; got {text}")
    return value


def _first_existing(path: Path) -> Path:
    return next(p for p in (path, *path.parents) if p.exists() or p == Path(p.anchor or "."))


def output_folder(text: str) -> str:
    """The ``type=`` of a flag naming a folder a command writes into (created when missing):
    refused at parse time, before any work, when it is a file, lies under a file, or cannot be
    written; argparse's message names the flag."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(
            f"{text} is an existing file; expected a folder (created if missing)")
    ancestor = _first_existing(path)
    if ancestor.exists() and not ancestor.is_dir():
        raise argparse.ArgumentTypeError(f"{text} lies under {ancestor}, which is a file")
    if ancestor.exists() and not os.access(ancestor, os.W_OK):
        raise argparse.ArgumentTypeError(f"{text}: the folder {ancestor} is not writable")
    return text


def output_file(text: str) -> str:
    """The ``type=`` of a flag naming a file a command writes: refused at parse time, before any
    work, when it is a folder or its folder is missing, a file, or not writable."""
    from latentsurgeon._io import check_writable_file

    parent = Path(text).parent
    try:
        check_writable_file(text)  # the writer's own check, so both say the same
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot write {text}: {exc.strerror}") from None
    if not os.access(parent, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write {text}: {parent} is not writable")
    return text


def model_args(p: argparse.ArgumentParser, *, weights_help: str | None = None) -> None:
    p.add_argument("--model", metavar="PKG.MOD:FN",
                   help="a function returning your nn.Module (default: the reference DigitCNN)")
    p.add_argument("--weights", metavar="FILE",
                   help=weights_help or "state_dict of the model (torch.save(model.state_dict())"
                                        " or a training checkpoint); without it the reference "
                                        "model is trained here first")


def data_args(p: argparse.ArgumentParser, default: str | None = "decoy-watermark") -> None:
    p.add_argument("--data", default=default, metavar="NAME|PKG.MOD:FN",
                   help="decoy-watermark | decoy-swatch (bundled) | a function returning your "
                        "data: an object/dict with train/test/poisoned splits, one split with "
                        f"images/labels/artifact, a tuple or a tensor (default: {default})")


def run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=count(0), default=0, help="seed of data, training and fits (default 0)")
    p.add_argument("--epochs", type=count(1), default=15,
                   help="epochs when the reference model is trained here (default 15)")
    p.add_argument("--batch-size", type=count(1), default=128,
                   help="samples per forward pass (default 128)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or status lines")


def pooling_arg(p: argparse.ArgumentParser, default: str = DEFAULT_POOLING) -> None:
    p.add_argument("--pooling", default=default, choices=POOLINGS,
                   help=f"how conv activations become vectors (default {default})")
