"""Kronecker-factored curvature (K-FAC, George et al.'s EK-FAC) for influence functions.

Per supported module (``nn.Linear`` on inputs of any rank, ``nn.Conv2d`` with ``groups=1`` and
zero padding) with weight ``W`` ``(out, in')`` (a convolution's kernel flattened to
``in' = C * kh * kw``; the bias, when chosen, is one more input column fed a constant 1):

* ``A = mean over samples and positions of a a^T`` ``(in', in')``: the covariance of the
  module's inputs (a convolution's unfolded patches), from what the module received;
* ``S = (1/N) sum over samples and positions of d d^T`` ``(out, out)``: the covariance of the
  pseudo-gradients ``d`` at the module's output (the gradient of the loss with respect to the
  output, taken through :meth:`~latentsurgeon.activations.access.ModelAccess.offsets`).

The Fisher of the mean training loss restricted to the module is approximated by ``S (x) A``
(the flattened weight gradient of one sample is ``vec(sum_t d_t a_t^T)``). Both factors are
eigendecomposed in float64, ``A = Q_A diag(a) Q_A^T``, ``S = Q_S diag(s) Q_S^T``. K-FAC's
eigenvalues are ``s_i a_j``; EK-FAC replaces them by the mean squared per-sample pseudo-gradient
in that eigenbasis, ``Lambda_ij = mean_n (Q_S^T G_n Q_A)_ij^2`` (a second pass over the data),
which is the best diagonal fit in the Kronecker eigenbasis. The inverse-Hessian-vector product
of a gradient ``V`` ``(out, in')`` is two rotations and a division:
``Q_S [(Q_S^T V Q_A) / (Lambda + damping)] Q_A^T``.

Pseudo-gradients (``fisher=``): ``"true"`` draws one label per sample from the model's own
predictive distribution (cross-entropy: a class from the softmax; reconstruction, the mean
squared error over ``D`` outputs: a target ``output + sqrt(D/2) z`` with Gaussian ``z``, whose
covariance makes the Fisher equal the Gauss-Newton matrix in expectation), so the factors
estimate the true Fisher = the Gauss-Newton matrix; ``"expected"`` takes that expectation
exactly (one backward pass per output column, ``K`` for ``K`` classes, ``D`` for a
reconstruction: for small heads and for checks); ``"empirical"`` uses the loss's own gradient
(the data's labels: the empirical Fisher, which is not a curvature away from a minimum).
The draws are seeded per sample index (blocks of :data:`NOISE_BLOCK` samples), so they do not
depend on the batch size; the sums run in float64 over fixed blocks of :data:`SUM_BLOCK`
samples, so the factors do not depend on the batch size either as long as the per-sample
activations and gradients do not (see ``docs/explain.md`` for what was measured).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from latentsurgeon._validation import check_finite
from latentsurgeon.activations.access import ModelAccess
from latentsurgeon.activations.batching import batch_inputs, to_device
from latentsurgeon.errors import InvalidParameterError, LatentSurgeonError
from latentsurgeon.explain._gradients import LinearFactors

__all__ = ["FISHERS", "NOISE_BLOCK", "SUM_BLOCK", "KroneckerModule", "compute_factors",
           "factored_scores", "inverse_hvp", "kronecker_modules"]

FISHERS = ("true", "expected", "empirical")
#: samples per block of seeded label draws (the draw of sample ``i`` depends on ``i`` only)
NOISE_BLOCK = 1024
#: samples per block of the float64 sums (fixed, so the sums do not follow the batch size)
SUM_BLOCK = 256


@dataclass(frozen=True)
class KroneckerModule:
    """One module with Kronecker factors: its name, kind, parameter names and layout."""

    name: str
    kind: str                   # "linear" or "conv2d"
    weight: str                 # parameter name of the weight
    bias: str | None            # parameter name of the bias, when differentiated
    out_features: int
    in_features: int            # in' without the bias column
    conv: tuple[Any, ...] = ()  # (kernel_size, dilation, padding, stride) of a convolution

    @property
    def columns(self) -> int:
        return self.in_features + (1 if self.bias is not None else 0)


def _describe_unsupported(model: nn.Module, owners: Iterable[str]) -> list[str]:
    modules = dict(model.named_modules())
    out = []
    for owner in owners:
        module = modules.get(owner)
        kind = type(module).__name__ if module is not None else "parameter of the model itself"
        out.append(f"{owner or '<root>'} ({kind})")
    return out


def kronecker_modules(model: nn.Module, names: Sequence[str]) -> list[KroneckerModule]:
    """The modules that own the parameters ``names``, each with its layout.

    Raises:
        InvalidParameterError: a parameter belongs to a module without Kronecker factors (every
            such module is named), or only a bias of a layer is differentiated.
    """
    modules = dict(model.named_modules())
    attention = {n for n, m in modules.items() if isinstance(m, nn.MultiheadAttention)}
    owners: dict[str, set[str]] = {}
    for name in names:
        owner, _, attr = name.rpartition(".")
        owners.setdefault(owner, set()).add(attr)
    bad, found = [], []
    for owner, attrs in owners.items():
        module = modules.get(owner)
        # nn.MultiheadAttention runs its projections functionally (its out_proj is a Linear
        # that is never called), so no hook sees them
        inside_attention = any(owner == a or owner.startswith(a + ".") for a in attention)
        conv_ok = (isinstance(module, nn.Conv2d) and module.groups == 1
                   and module.padding_mode == "zeros" and not isinstance(module.padding, str))
        if inside_attention or not (isinstance(module, nn.Linear) or conv_ok) \
                or not attrs <= {"weight", "bias"} or "weight" not in attrs:
            bad.append(owner)
            continue
        prefix = f"{owner}." if owner else ""
        bias = f"{prefix}bias" if "bias" in attrs else None
        if isinstance(module, nn.Linear):
            found.append(KroneckerModule(owner, "linear", f"{prefix}weight", bias,
                                         module.out_features, module.in_features))
        else:
            assert isinstance(module, nn.Conv2d)
            kh, kw = module.kernel_size
            found.append(KroneckerModule(
                owner, "conv2d", f"{prefix}weight", bias, module.out_channels,
                module.in_channels * kh * kw,
                (module.kernel_size, module.dilation, module.padding, module.stride)))
    if bad:
        raise InvalidParameterError(
            "solver='kfac'/'ekfac' has Kronecker factors for nn.Linear and nn.Conv2d (groups=1, "
            "zero padding) only; params= selects parameters of "
            + ", ".join(_describe_unsupported(model, bad))
            + " (nn.MultiheadAttention runs its projections functionally, so they are not "
            "supported either). Select supported layers with params=, or use solver='cg' or "
            "'exact' for these.")
    return found


# -- per-batch statistics ---------------------------------------------------------------------------
def _rows(module: KroneckerModule, inputs: torch.Tensor) -> torch.Tensor:
    """``(N, T, in')`` float64 input rows (a convolution's patches), with the bias column."""
    if module.kind == "conv2d":
        kernel, dilation, padding, stride = module.conv
        patches = F.unfold(inputs, kernel, dilation=dilation, padding=padding, stride=stride)
        rows = patches.transpose(1, 2)
    else:
        rows = inputs.reshape(inputs.shape[0], -1, inputs.shape[-1])
    rows = rows.to(torch.float64)
    if module.bias is not None:
        rows = torch.cat([rows, rows.new_ones(*rows.shape[:2], 1)], dim=2)
    return rows


def _grad_rows(module: KroneckerModule, grad: torch.Tensor) -> torch.Tensor:
    """``(N, T, out)`` float64 output-gradient rows."""
    if module.kind == "conv2d":
        return grad.reshape(grad.shape[0], grad.shape[1], -1).transpose(1, 2).to(torch.float64)
    return grad.reshape(grad.shape[0], -1, grad.shape[-1]).to(torch.float64)


class _Noise:
    """Seeded draws per sample index: block ``j`` of :data:`NOISE_BLOCK` samples comes from a
    generator seeded with ``(seed, j)``, so a sample's draw does not depend on the batching."""

    def __init__(self, seed: int, kind: str) -> None:
        self.seed, self.kind = int(seed), kind
        self._cache: dict[tuple[int, tuple[int, ...]], torch.Tensor] = {}

    def _block(self, index: int, shape: tuple[int, ...]) -> torch.Tensor:
        key = (index, shape)
        if key not in self._cache:
            self._cache.clear()
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
            draw = torch.rand if self.kind == "uniform" else torch.randn
            self._cache[key] = draw((NOISE_BLOCK, *shape), generator=generator,
                                    dtype=torch.float64)
        return self._cache[key]

    def rows(self, start: int, count: int, shape: tuple[int, ...]) -> torch.Tensor:
        parts, position = [], start
        while position < start + count:
            block, offset = divmod(position, NOISE_BLOCK)
            take = min(NOISE_BLOCK - offset, start + count - position)
            parts.append(self._block(block, shape)[offset:offset + take])
            position += take
        return torch.cat(parts)


def _cotangents(access: ModelAccess, output: torch.Tensor, fisher: str, start: int,
                noise: _Noise | None) -> list[torch.Tensor]:
    """Vectors ``v`` at the model's output whose backward passes give the pseudo-gradients."""
    out = output.detach().to(torch.float64)
    n = out.shape[0]
    if access.loss in ("cross_entropy", "predicted"):
        if out.dim() != 2:
            raise LatentSurgeonError(
                f"loss={access.loss!r} needs (N, n_classes) logits; the output has shape "
                f"{tuple(out.shape)}.")
        p = torch.softmax(out, dim=1)
        if fisher == "expected":  # columns of a factor of diag(p) - p p^T
            eye = torch.eye(p.shape[1], dtype=p.dtype, device=p.device)
            return [(p[:, k:k + 1].sqrt() * (eye[k] - p)).to(output.dtype)
                    for k in range(p.shape[1])]
        assert noise is not None
        uniform = noise.rows(start, n, (p.shape[1],)).to(p.device)
        gumbel = -torch.log(-torch.log(uniform.clamp(1e-300, 1.0 - 1e-16)))
        labels = (torch.log(p.clamp_min(1e-300)) + gumbel).argmax(dim=1)
        return [(p - F.one_hot(labels, p.shape[1]).to(p.dtype)).to(output.dtype)]
    # reconstruction: loss = mean over D of (out - x)^2, whose Hessian in the output is 2/D I
    d = out[0].numel()
    scale = math.sqrt(2.0 / d)
    if fisher == "expected":
        flat = torch.eye(d, dtype=out.dtype, device=out.device) * scale
        return [flat[k].reshape(out.shape[1:]).expand_as(out).to(output.dtype)
                for k in range(d)]
    assert noise is not None
    z = noise.rows(start, n, tuple(out.shape[1:])).to(out.device)
    return [(scale * z).to(output.dtype)]


def batch_statistics(access: ModelAccess, modules: Sequence[KroneckerModule], batch: Any,
                     start: int, *, fisher: str, layer: str | None, noise: _Noise | None
                     ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per module ``(a, d)``: input rows ``(N, T, in')`` and pseudo-gradient rows
    ``(N, R, T, out)`` (``R`` pseudo-gradients per sample: 1, or ``K``/``D`` for
    ``fisher="expected"``), float64, for samples ``start .. start + N`` of the data."""
    names = [m.name for m in modules]
    inputs = batch_inputs(batch)
    with access.offsets(names, inputs=True) as probe:
        if fisher == "empirical":
            outputs = None
            roots = [access.losses(batch, layer=layer).sum()]
            vectors: list[torch.Tensor | None] = [None]
        else:
            if layer is not None:
                outputs = access.forward_to(inputs, layer)
            elif access.loss == "reconstruction":
                outputs = access.output(inputs)
            else:
                outputs = access.logits(inputs)
            vectors = list(_cotangents(access, outputs, fisher, start, noise))
            roots = [outputs] * len(vectors)
        offsets = [probe.offset(n) for n in names]
        received = [probe.inputs[n][-1] for n in names]
        per_draw = []
        for i, (root, vector) in enumerate(zip(roots, vectors, strict=True)):
            grads = torch.autograd.grad(root, offsets, grad_outputs=vector, allow_unused=True,
                                        retain_graph=i < len(roots) - 1)
            per_draw.append([torch.zeros_like(o) if g is None else g.detach()
                             for g, o in zip(grads, offsets, strict=True)])
    out = []
    for j, module in enumerate(modules):
        a = received[j]
        if not isinstance(a, torch.Tensor):
            raise LatentSurgeonError(f"Layer {module.name!r} received no tensor input.")
        rows = _rows(module, a)
        d = torch.stack([_grad_rows(module, draw[j]) for draw in per_draw], dim=1)
        check_finite(rows, f"the inputs of layer {module.name!r}")
        check_finite(d, f"the pseudo-gradients at layer {module.name!r}")
        out.append((rows, d))
    return out


# -- fixed-block sums ------------------------------------------------------------------------------
class _BlockSum:
    """Sums ``f(block)`` over consecutive blocks of exactly :data:`SUM_BLOCK` samples (the last
    one shorter), whatever the batches the samples arrived in."""

    def __init__(self, contribution: Callable[[list[torch.Tensor]], list[torch.Tensor]]) -> None:
        self.contribution = contribution
        self.pending: list[list[torch.Tensor]] = []
        self.count = 0
        self.total: list[torch.Tensor] | None = None

    def _flush(self, n: int) -> None:
        joined = [torch.cat(parts) for parts in zip(*self.pending, strict=True)]
        block, rest = [t[:n] for t in joined], [t[n:] for t in joined]
        self.pending = [rest] if len(rest[0]) else []
        self.count -= n
        part = self.contribution(block)
        self.total = part if self.total is None else [t + p for t, p in
                                                      zip(self.total, part, strict=True)]

    def add(self, tensors: list[torch.Tensor]) -> None:
        self.pending.append(tensors)
        self.count += len(tensors[0])
        while self.count >= SUM_BLOCK:
            self._flush(SUM_BLOCK)

    def result(self) -> list[torch.Tensor]:
        if self.count:
            self._flush(self.count)
        assert self.total is not None  # fit refuses empty data
        return self.total


def _covariances(block: list[torch.Tensor]) -> list[torch.Tensor]:
    a, d = block
    a2 = a.reshape(-1, a.shape[-1])
    d2 = d.reshape(-1, d.shape[-1])
    return [a2.T @ a2, d2.T @ d2]


def _rotated_squares(qa: torch.Tensor, qs: torch.Tensor
                     ) -> Callable[[list[torch.Tensor]], list[torch.Tensor]]:
    def contribution(block: list[torch.Tensor]) -> list[torch.Tensor]:
        a, d = block                     # (n, T, in'), (n, R, T, out)
        ra = a @ qa                      # rotated inputs
        rd = d @ qs                      # rotated pseudo-gradients
        if a.shape[1] == 1:              # one position: the gradient is an outer product
            sa = ra[:, 0] ** 2                               # (n, in')
            sd = (rd[:, :, 0] ** 2).sum(dim=1)               # (n, out), summed over draws
            return [sd.T @ sa]
        g = torch.einsum("nrto,nti->nroi", rd, ra)           # rotated per-sample gradients
        return [(g ** 2).sum(dim=(0, 1))]
    return contribution


def compute_factors(access: ModelAccess, modules: Sequence[KroneckerModule],
                    batches: Callable[[], Iterable[Any]], n_samples: int, *, fisher: str,
                    eigenvalue_correction: bool, layer: str | None, seed: int,
                    device: torch.device) -> dict[str, dict[str, torch.Tensor]]:
    """The factors of every module: ``{name: {"QA", "QS", "eigenvalues"}}`` (float64;
    ``eigenvalues`` ``(out, in')``: EK-FAC's refit when ``eigenvalue_correction``, else K-FAC's
    ``s_i a_j``). ``batches()`` yields the data's batches afresh (two passes for EK-FAC)."""
    kind = "uniform" if access.loss in ("cross_entropy", "predicted") else "normal"
    noise = None if fisher != "true" else _Noise(seed, kind)

    def passes() -> Iterable[list[tuple[torch.Tensor, torch.Tensor]]]:
        position = 0
        for batch in batches():
            stats = batch_statistics(access, modules, to_device(batch, device), position,
                                     fisher=fisher, layer=layer, noise=noise)
            position += len(stats[0][0])
            yield stats

    sums = [_BlockSum(_covariances) for _ in modules]
    positions = [0] * len(modules)
    for stats in passes():
        for j, (a, d) in enumerate(stats):
            sums[j].add([a, d])
            positions[j] += a.shape[0] * a.shape[1]
    factors: dict[str, dict[str, torch.Tensor]] = {}
    for j, module in enumerate(modules):
        a_sum, s_sum = sums[j].result()
        a_cov = a_sum / positions[j]
        s_cov = s_sum / n_samples
        eva, qa = torch.linalg.eigh((a_cov + a_cov.T) / 2)
        evs, qs = torch.linalg.eigh((s_cov + s_cov.T) / 2)
        factors[module.name] = {"QA": qa, "QS": qs,
                                "eigenvalues": torch.outer(evs.clamp_min(0), eva.clamp_min(0))}
    if eigenvalue_correction:
        refits = [_BlockSum(_rotated_squares(factors[m.name]["QA"], factors[m.name]["QS"]))
                  for m in modules]
        for stats in passes():
            for j, (a, d) in enumerate(stats):
                refits[j].add([a, d])
        for j, module in enumerate(modules):
            factors[module.name]["eigenvalues"] = refits[j].result()[0] / n_samples
    for module in modules:
        check_finite(factors[module.name]["eigenvalues"],
                     f"the curvature eigenvalues of layer {module.name!r}")
    return factors


# -- the product --------------------------------------------------------------------------------------
def module_slices(modules: Sequence[KroneckerModule], names: Sequence[str],
                  shapes: dict[str, torch.Size]) -> dict[str, slice]:
    """Where each parameter lies in the flat gradient (``names`` in order)."""
    out, offset = {}, 0
    for name in names:
        size = math.prod(shapes[name])
        out[name] = slice(offset, offset + size)
        offset += size
    return out


def inverse_hvp(vectors: torch.Tensor, modules: Sequence[KroneckerModule],
                factors: dict[str, dict[str, torch.Tensor]], dampings: dict[str, float],
                slices: dict[str, slice]) -> torch.Tensor:
    """``(F + damping I)^-1 v`` for each row of ``vectors`` ``(m, P)`` (float64), module by
    module: ``Q_S [(Q_S^T V Q_A) / (Lambda + damping)] Q_A^T``."""
    out = torch.empty_like(vectors)
    m = len(vectors)
    for module in modules:
        f = factors[module.name]
        w = slices[module.weight]
        parts = [vectors[:, w].reshape(m, module.out_features, module.in_features)]
        if module.bias is not None:
            parts.append(vectors[:, slices[module.bias]].reshape(m, module.out_features, 1))
        v = torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]
        rotated = f["QS"].T @ v @ f["QA"]
        rotated = rotated / (f["eigenvalues"] + dampings[module.name])
        back = f["QS"] @ rotated @ f["QA"].T
        out[:, w] = back[:, :, :module.in_features].reshape(m, -1)
        if module.bias is not None:
            out[:, slices[module.bias]] = back[:, :, -1]
    return out


def _rotate(block: LinearFactors, j: int, module: KroneckerModule,
            f: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer ``j``'s output gradients and inputs (with the bias column) in the eigenbases."""
    a = block.inputs[j].to(torch.float64)
    if module.bias is not None:
        a = torch.cat([a, a.new_ones(len(a), 1)], dim=1)
    return block.grads[j].to(torch.float64) @ f["QS"], a @ f["QA"]


def factored_scores(test: LinearFactors, train: LinearFactors, modules: Sequence[KroneckerModule],
                    factors: dict[str, dict[str, torch.Tensor]], dampings: dict[str, float]
                    ) -> torch.Tensor:
    """``(n_test, n_train)`` products ``g_test^T (F + damping I)^-1 g_train`` of factored
    per-sample gradients of ``nn.Linear`` layers (a sample's weight gradient is ``d a^T``).

    In the eigenbasis the gradient is the outer product ``(Q_S^T d)(Q_A^T a)^T``, so each pair
    costs ``out * in'`` multiply-adds per module (the flat route: two ``(out, in')`` rotations
    per test point, then a ``P``-long product per pair); the ``P``-long gradients are never
    formed.
    """
    total = torch.zeros(len(test), len(train), dtype=torch.float64,
                        device=test.grads[0].device)
    for j, module in enumerate(modules):
        f = factors[module.name]
        weights = 1.0 / (f["eigenvalues"] + dampings[module.name])        # (out, in')

        d_test, a_test = _rotate(test, j, module, f)
        d_train, a_train = _rotate(train, j, module, f)
        n = max(len(train), 1)
        # a chunk of test rows at a time: (rows, n_train, out) and (rows, n_train, in')
        rows = max(1, 2**23 // (n * max(module.out_features, module.columns)))
        for start in range(0, len(test), rows):
            stop = min(start + rows, len(test))
            outer = d_test[start:stop, None, :] * d_train[None, :, :]    # (r, n, out)
            inner = a_test[start:stop, None, :] * a_train[None, :, :]    # (r, n, in')
            total[start:stop] += ((outer @ weights) * inner).sum(dim=2)
    return total
