"""Influence functions (Koh & Liang, 2017): how upweighting a training example changes a test
example's loss, ``-grad L(test)^T (H + damping I)^-1 grad L(train)``."""

from __future__ import annotations

import logging
from collections.abc import Callable as CallableType
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from latentsurgeon._validation import Callable, Interval, Options
from latentsurgeon.activations.access import LOSSES, LossSpec, ModelAccess
from latentsurgeon.activations.batching import (
    analysis_device,
    as_loader,
    iter_batches,
    to_device,
)
from latentsurgeon.errors import InvalidParameterError, LatentSurgeonError, NonFiniteError
from latentsurgeon.explain import kfac
from latentsurgeon.explain._base import Block, ExampleExplainer
from latentsurgeon.explain._gradients import (
    GradientSpec,
    LinearFactors,
    NotFactorable,
    State,
    _sample_tree,
    current_state,
    gradient_matrix,
    gradients_from_data,
    gradients_to_data,
    linear_layers,
    parameter_names,
)
from latentsurgeon.hooks import preserve_model_state, resolve_layer
from latentsurgeon.hooks.resolve import LayerSelector

__all__ = ["SOLVERS", "InfluenceFunctions", "hessian_vector_product"]

logger = logging.getLogger(__name__)

SOLVERS = ("auto", "exact", "cg", "kfac", "ekfac")


def _flat(tensors: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    return torch.cat([tensors[n].reshape(-1) for n in names])


def _unflat(vector: torch.Tensor, like: dict[str, torch.Tensor], names: list[str]
            ) -> dict[str, torch.Tensor]:
    out, offset = {}, 0
    for n in names:
        size = like[n].numel()
        out[n] = vector[offset:offset + size].reshape(like[n].shape)
        offset += size
    return out


def hessian_vector_product(spec: GradientSpec, state: State, batch: Any
                           ) -> CallableType[[torch.Tensor], torch.Tensor]:
    """``v -> (sum over the batch's samples of the Hessian of their losses) @ v`` for flat
    ``v`` of the differentiated parameters (reverse over reverse, so every operation with a
    double backward works); vmap it to multiply many vectors at once."""
    params, rest = spec.split(state)
    names = spec.names
    access, layer = spec.access, spec.layer
    if callable(access.loss):  # a user's loss is defined on one sample: map it
        loss_one = spec.function()
        tree = _sample_tree(batch)

        def total(p: State) -> torch.Tensor:
            return torch.func.vmap(loss_one, in_dims=(None, None, 0))(p, rest, tree).sum()
    else:
        # the named losses are batched already (samples are independent in eval mode): the
        # sum needs no vmap over samples, which also serves layers without a vmap batching
        # rule for double backward (nn.LSTM)
        def total(p: State) -> torch.Tensor:
            return access.losses(batch, layer=layer, state={**rest, **p}).sum()

    gradient = torch.func.grad(total)

    def hvp(v: torch.Tensor) -> torch.Tensor:
        directions = _unflat(v, params, names)

        def along(p: State) -> torch.Tensor:
            g = gradient(p)
            return sum((g[n] * directions[n]).sum() for n in names)  # type: ignore[return-value]

        return _flat(torch.func.grad(along)(params), names)

    return hvp


class InfluenceFunctions(ExampleExplainer):
    """Koh & Liang's influence of upweighting a training example on a test example's loss.

    ``score(test, train) = -g(test)^T (H + damping I)^-1 g(train)``, with ``g`` the gradient of a
    sample's loss with respect to the chosen parameters at the model's present weights and
    ``H`` the Hessian of the *mean* training loss. The sign is Koh & Liang's: a positive score
    means upweighting the training example raises the test loss (harmful); the most negative
    scores are the most helpful examples (proponents). lfxai omits the minus sign.

    Scaling: the score is the derivative of the test loss with respect to the weight ``eps`` of
    the training example in ``mean loss + eps * loss(train example)``; removing the example is
    ``eps = -1/n``, so ``-score / n`` estimates the change in test loss on removing it.

    Damping: ``H + damping * I`` keeps the solve defined when the model is not at an exact
    minimum (non-convex models have indefinite Hessians). lfxai's LiSSA with ``damp=1e-3,
    scale=1e3`` solves ``(H + 1 * I)^-1`` in the limit (damp times scale), so ``damping=1.0``
    reproduces its target.

    Solvers:
        ``"exact"``: the Hessian ``P x P`` assembled from Hessian-vector products (vmapped,
        ``torch.func``), ``H + damping I`` factorised once by Cholesky (LU, with a warning, if it
        is not positive definite), every test gradient solved against it. Memory ``P^2``.
        ``"cg"``: conjugate gradient on Hessian-vector products, every test point at once, to a
        relative residual of ``cg_tol``; each iteration is one pass over the Hessian data.
        ``"auto"``: exact when ``P <= max_exact_params``, else CG.
        ``"ekfac"`` / ``"kfac"``: Kronecker-factored curvature per ``nn.Linear`` and
        ``nn.Conv2d`` (:mod:`latentsurgeon.explain.kfac`): the Fisher (Gauss-Newton) matrix of
        each module approximated by ``S (x) A``, eigendecomposed once in float64 at ``fit``;
        EK-FAC refits the eigenvalues from per-sample pseudo-gradients in that eigenbasis.
        Every inverse-Hessian product is then two rotations and a division per module; the
        cross-module blocks are ignored. Any other module among ``params`` is an
        :class:`~latentsurgeon.errors.InvalidParameterError` naming it. A loss callable is not
        supported (use a named loss, or CG). Memory ``out^2 + in^2`` per module.

    Args:
        loss, test_loss, params, layer, head: as :class:`~latentsurgeon.explain.TracIn`.
        damping: added to the Hessian's diagonal (>= 0); K-FAC/EK-FAC use it only with
            ``relative_damping=None``.
        solver: ``"auto"``, ``"exact"``, ``"cg"``, ``"kfac"`` or ``"ekfac"``.
        relative_damping: K-FAC/EK-FAC: each module's damping is this fraction of the mean of
            its curvature eigenvalues (kronfluence's default, 0.1); None: the absolute
            ``damping`` for every module (as the exact and CG solvers use it).
        fisher: K-FAC/EK-FAC pseudo-gradients: ``"true"`` (labels sampled from the model, one
            per example: the true Fisher = Gauss-Newton), ``"expected"`` (that expectation
            exactly, one backward pass per output column), ``"empirical"`` (the data's labels).
        max_exact_params: the largest parameter count ``"auto"`` solves exactly.
        cg_tol: CG stops when ``||r|| <= cg_tol * ||b||`` for every test point.
        cg_max_iter: the most CG iterations.
        hessian_samples: estimate the Hessian on a seeded random subset of this many training
            examples (None: all of them).
        seed: the subset's seed.
        batch_size: samples per ``vmap`` call.
        cache_mb: keep training gradients after ``fit`` if they take at most this (MiB).
        device: None or the model's device.
        progress: tqdm bars.

    Learned attributes:
        hessian_: ``(P, P)`` float64 Hessian of the mean training loss (exact solver), else None.
        solver_: ``"exact"`` or ``"cg"``.
        n_params_, n_train_: parameter and training-example counts.
        gradients_cached_: whether ``fit`` kept the training gradients (within ``cache_mb``).
        train_block_: the ``[start, end)`` training rows this process scores.
        cg_iterations_: iterations of the last conjugate-gradient solve (CG solver).
        factors_: K-FAC/EK-FAC: ``{module: {"QA", "QS", "eigenvalues"}}`` float64 (the
            eigenbases of ``A`` and ``S`` and the ``(out, in')`` eigenvalues), else None;
            saved with the explainer and checked against the weights' fingerprint on load.
        dampings_: K-FAC/EK-FAC: ``{module: damping}`` as used.

    Scores are float64. Under a process group the ranks split the training examples; every
    rank builds the same Hessian from all of them.
    """

    _all_zero_cause = (
        "every per-sample gradient is zero, so the loss does not depend on the parameters "
        "differentiated (a loss callable that ignores the output, params= naming layers the "
        "loss does not reach, or a saturated model). Check loss=, test_loss= and params=.")
    _parameter_constraints = {
        "loss": [Options(LOSSES), Callable()],
        "test_loss": [Options(LOSSES), Callable(), None],
        "layer": [str, None],
        "damping": Interval(float, 0, None),
        "solver": Options(SOLVERS),
        "relative_damping": [Interval(float, 0, None), None],
        "fisher": Options(kfac.FISHERS),
        "max_exact_params": Interval(int, 1, None),
        "cg_tol": Interval(float, 0, None, closed="neither"),
        "cg_max_iter": Interval(int, 1, None),
        "hessian_samples": [Interval(int, 1, None), None],
        "seed": Interval(int, 0, None),
        "batch_size": Interval(int, 1, None),
        "cache_mb": Interval(float, 0, None),
        "progress": bool,
    }

    def __init__(self, loss: LossSpec = "reconstruction", *, test_loss: LossSpec | None = None,
                 params: LayerSelector | None = None, layer: str | None = None,
                 head: str | int | None = "logits", damping: float = 0.01,
                 solver: str = "auto", relative_damping: float | None = 0.1,
                 fisher: str = "true", max_exact_params: int = 4096, cg_tol: float = 1e-6,
                 cg_max_iter: int = 500, hessian_samples: int | None = None, seed: int = 0,
                 batch_size: int = 64, cache_mb: float = 512.0,
                 device: str | torch.device | None = None, progress: bool = True) -> None:
        self.loss = loss
        self.test_loss = test_loss
        self.params = params
        self.layer = layer
        self.head = head
        self.damping = damping
        self.solver = solver
        self.relative_damping = relative_damping
        self.fisher = fisher
        self.max_exact_params = max_exact_params
        self.cg_tol = cg_tol
        self.cg_max_iter = cg_max_iter
        self.hessian_samples = hessian_samples
        self.seed = seed
        self.batch_size = batch_size
        self.cache_mb = cache_mb
        self.device = device
        self.progress = progress

    # -- fitting ---------------------------------------------------------------------------------
    def _hessian_data(self, train: Any) -> tuple[Any, int]:
        loader = as_loader(train, self.batch_size)
        n = len(loader.dataset)  # type: ignore[arg-type]
        if self.hessian_samples is None or self.hessian_samples >= n:
            return train, n
        generator = torch.Generator().manual_seed(self.seed)
        chosen = torch.randperm(n, generator=generator)[:self.hessian_samples].sort().values
        subset = Subset(loader.dataset, chosen.tolist())
        return DataLoader(subset, batch_size=self.batch_size,
                          collate_fn=loader.collate_fn), len(chosen)

    def _fit(self, train: Any, local: Block, model: nn.Module | None) -> None:
        if model is None:
            raise LatentSurgeonError(
                "InfluenceFunctions.fit needs the model: fit(train, model=model).")
        self._set_model(model)
        names = self._train_spec.names
        self._train_block = local
        self.n_params_ = sum(self._state[n].numel() for n in names)
        exact = self.solver == "exact" or (self.solver == "auto"
                                           and self.n_params_ <= self.max_exact_params)
        self.solver_ = self.solver if self.solver in ("kfac", "ekfac") else (
            "exact" if exact else "cg")
        modules = self._kronecker_modules() if self.solver_ in ("kfac", "ekfac") else None
        self._hessian_source, self._n_hessian = self._hessian_data(train)
        self.hessian_ = None
        self.factors_: dict[str, dict[str, torch.Tensor]] | None = None
        self.dampings_: dict[str, float] | None = None
        with preserve_model_state(model):
            model.eval()
            if modules is not None:
                self._fit_factors(modules)
            elif exact:
                self.hessian_ = self._assemble_hessian()
                self._factorise()
            itemsize = self._state[names[0]].element_size()
            needed_mb = (local.end - local.start) * self.n_params_ * itemsize / 2**20
            self._train_gradients = None
            self._train_bounds: list[tuple[int, int]] = []
            self.gradients_cached_ = needed_mb <= self.cache_mb
            if self.gradients_cached_:
                self._train_gradients, self._train_bounds = self._compute_train_gradients()

    def _set_model(self, model: nn.Module) -> torch.device:
        """The device, the weights and the gradient specs of ``model``; returns the device."""
        device = analysis_device(model, self.device)
        layer = None if self.layer is None else resolve_layer(model, self.layer)
        names = parameter_names(model, self.params)
        self._device = device
        self._state = current_state(model)
        self._train_spec = GradientSpec(ModelAccess(model, head=self.head, loss=self.loss), names,
                                        layer=layer)
        test_loss = self.loss if self.test_loss is None else self.test_loss
        self._test_spec = GradientSpec(ModelAccess(model, head=self.head, loss=test_loss), names,
                                       layer=layer)
        if self.solver in ("kfac", "ekfac") and not callable(self.loss) \
                and not callable(test_loss):
            # all-Linear parameters: keep per-sample gradients factored (d, a), so scores are
            # taken in the eigenbasis without P-long gradients (kfac.factored_scores)
            self._train_spec.linear = self._test_spec.linear = linear_layers(model, names)
        return device

    def _gradient_matrix(self, spec: GradientSpec, data: Any, desc: str) -> tuple[Any, Any]:
        """Per-sample gradients, factored when the layers allow it, else flat (both specs
        then stay flat)."""
        try:
            return gradient_matrix(spec, self._state, data, self.batch_size, self._device,
                                   desc=desc, progress=self.progress)
        except NotFactorable as exc:
            logger.info("InfluenceFunctions: flat per-sample gradients (%s)", exc)
            self._train_spec.linear = self._test_spec.linear = None
            return gradient_matrix(spec, self._state, data, self.batch_size, self._device,
                                   desc=desc, progress=self.progress)

    def _kronecker_modules(self) -> list[kfac.KroneckerModule]:
        if callable(self.loss):
            raise InvalidParameterError(
                f"solver={self.solver!r} needs a named loss ('reconstruction', "
                "'cross_entropy' or 'predicted') to form its pseudo-gradients; got a loss "
                "callable. Use solver='cg' (or 'exact') with a loss callable.")
        assert self._model is not None
        return kfac.kronecker_modules(self._model, self._train_spec.names)

    def _fit_factors(self, modules: list[kfac.KroneckerModule]) -> None:
        """The Kronecker factors (once; every explain() reuses them) and each module's damping."""
        self.factors_ = kfac.compute_factors(
            self._train_spec.access, modules, self._hessian_batches, self._n_hessian,
            fisher=self.fisher, eigenvalue_correction=self.solver_ == "ekfac",
            layer=self._train_spec.layer, seed=self.seed, device=self._device)
        self.dampings_ = {}
        for module in modules:
            mean = float(self.factors_[module.name]["eigenvalues"].mean())
            damping = (self.damping if self.relative_damping is None
                       else self.relative_damping * mean)
            if damping <= 0 and float(self.factors_[module.name]["eigenvalues"].min()) <= 0:
                raise InvalidParameterError(
                    f"damping: the curvature of layer {module.name!r} is singular (its smallest "
                    f"eigenvalue is {float(self.factors_[module.name]['eigenvalues'].min()):.3g}"
                    f", the mean {mean:.3g}) and the damping is {damping:.3g}; use "
                    "relative_damping > 0 (e.g. 0.1) or damping > 0 with relative_damping=None.")
            self.dampings_[module.name] = damping
        self._modules = modules

    def _compute_train_gradients(self) -> tuple[Any, list[tuple[int, int]]]:
        return self._gradient_matrix(self._train_spec, self._train_block.data,
                                     "training gradients")

    def _hessian_batches(self) -> Any:
        return tqdm(iter_batches(self._hessian_source, self.batch_size), desc="Hessian",
                    unit="batch", leave=False, disable=None if self.progress else True)

    def _assemble_hessian(self) -> torch.Tensor:
        dtype = self._state[self._train_spec.names[0]].dtype
        P = self.n_params_
        eye = torch.eye(P, dtype=dtype, device=self._device)
        chunk = max(1, min(P, 2**22 // max(P, 1)))
        total = torch.zeros(P, P, dtype=torch.float64, device=self._device)
        for batch in self._hessian_batches():
            hvp = hessian_vector_product(self._train_spec, self._state,
                                         to_device(batch, self._device))
            total += torch.func.vmap(hvp, chunk_size=chunk)(eye).to(torch.float64)
        hessian = total / self._n_hessian
        hessian = (hessian + hessian.T) / 2  # symmetric up to rounding; make it exactly so
        if not bool(torch.isfinite(hessian).all()):
            raise NonFiniteError("The Hessian holds NaN or Inf; check the model and the data.")
        return hessian

    def _factorise(self) -> None:
        assert self.hessian_ is not None
        system = self.hessian_ + self.damping * torch.eye(
            self.n_params_, dtype=torch.float64, device=self.hessian_.device)
        factor, info = torch.linalg.cholesky_ex(system)
        if int(info) == 0:
            self._solve = lambda b: torch.cholesky_solve(b, factor)
            return
        eigenvalues = torch.linalg.eigvalsh(system)
        smallest = float(eigenvalues[0])
        # singular to working precision: an eigenvalue within rounding of zero
        rounding = len(eigenvalues) * torch.finfo(system.dtype).eps * float(
            eigenvalues.abs().max())
        lu, pivots, singular = torch.linalg.lu_factor_ex(system)
        if int(singular) != 0 or float(eigenvalues.abs().min()) <= rounding:
            # torch would say "U[k,k] is zero"; the user's lever is damping
            raise InvalidParameterError(
                f"damping={self.damping}: the Hessian of the training loss is singular (H + "
                f"damping*I has smallest eigenvalue {smallest:.3g}; some parameter directions "
                "do not change the loss), so it cannot be inverted. Use damping > 0, above "
                f"{max(0.0, self.damping - smallest):.3g} for a positive definite system (e.g. "
                "damping=0.01), or fewer parameters (params=).")
        logger.warning(
            "H + damping*I is not positive definite (smallest eigenvalue %.3g, damping %.3g): "
            "the model is not at a minimum of the training loss. Solving with LU; raise "
            "damping above %.3g for a positive definite system.", smallest, self.damping,
            self.damping - smallest)
        self._solve = lambda b: torch.linalg.lu_solve(lu, pivots, b)

    # -- the inverse-Hessian products --------------------------------------------------------------
    def _apply_system(self, vectors: torch.Tensor) -> torch.Tensor:
        """``(H + damping I) v`` for each row ``v`` of ``vectors`` (float64 in and out)."""
        dtype = self._state[self._train_spec.names[0]].dtype
        chunk = max(1, min(len(vectors), 2**22 // max(self.n_params_, 1)))
        moved = vectors.to(dtype)
        out: torch.Tensor | None = None
        for batch in iter_batches(self._hessian_source, self.batch_size):
            hvp = hessian_vector_product(self._train_spec, self._state,
                                         to_device(batch, self._device))
            part = torch.func.vmap(hvp, chunk_size=chunk)(moved).to(torch.float64)
            out = part if out is None else out.add_(part)
        assert out is not None  # fit refuses empty data
        return out.div_(self._n_hessian).add_(vectors, alpha=self.damping)

    def _conjugate_gradient(self, rhs: torch.Tensor) -> torch.Tensor:
        """Solve ``(H + damping I) x = b`` for every row ``b`` of ``rhs`` (batched CG).

        Rows that have converged keep their solution (their step sizes are zero); every row is
        still multiplied by the system, which keeps the iteration free of indexing copies.
        """
        x = torch.zeros_like(rhs)
        residual = rhs.clone()
        direction = residual.clone()
        rs = torch.einsum("ij,ij->i", residual, residual)
        target = self.cg_tol * rs.sqrt()
        active = rs.sqrt() > target
        done = 0
        bar = tqdm(range(self.cg_max_iter), desc="conjugate gradient", unit="iter", leave=False,
                   disable=None if self.progress else True)
        for _ in bar:
            if not bool(active.any()):
                break
            done += 1
            applied = self._apply_system(direction)
            curvature = torch.einsum("ij,ij->i", direction, applied)
            if bool((curvature[active] <= 0).any()):
                raise LatentSurgeonError(
                    "Conjugate gradient met non-positive curvature: H + damping*I is not "
                    f"positive definite at damping={self.damping}. Raise damping (the model is "
                    "not at a minimum of the training loss, so its Hessian is indefinite).")
            alpha = torch.where(active, rs / curvature.clamp_min(torch.finfo(rs.dtype).tiny),
                                torch.zeros_like(rs))
            x.addcmul_(alpha[:, None], direction)
            residual.addcmul_(-alpha[:, None], applied)
            new_rs = torch.einsum("ij,ij->i", residual, residual)
            beta = torch.where(active, new_rs / rs.clamp_min(torch.finfo(rs.dtype).tiny),
                               torch.zeros_like(rs))
            direction.mul_(beta[:, None]).add_(residual)
            rs = torch.where(active, new_rs, rs)
            active = active & (rs.sqrt() > target)
        if bool(active.any()):
            worst = float((rs.sqrt() / target.clamp_min(1e-300) * self.cg_tol)[active].max())
            logger.warning("conjugate gradient stopped after %d iterations with a relative "
                           "residual of %.3g (cg_tol %.3g); raise cg_max_iter or damping",
                           self.cg_max_iter, worst, self.cg_tol)
        logger.debug("conjugate gradient: %d iterations", done)
        self.cg_iterations_ = done
        return x

    def inverse_hvp(self, gradients: torch.Tensor) -> torch.Tensor:
        """``(H + damping I)^-1 g`` for each row ``g`` of ``gradients`` ``(m, P)``: float64."""
        self._check_fitted()
        rhs = gradients.to(torch.float64)
        if self.solver_ in ("kfac", "ekfac"):
            assert self.factors_ is not None and self.dampings_ is not None
            modules = getattr(self, "_modules", None)
            if modules is None:  # loaded from disk: the layout comes from the model
                modules = self._modules = self._kronecker_modules()
            names = self._train_spec.names
            slices = kfac.module_slices(modules, names,
                                        {n: self._state[n].shape for n in names})
            return kfac.inverse_hvp(rhs, modules, self.factors_, self.dampings_, slices)
        if self.solver_ == "exact":
            if not hasattr(self, "_solve"):  # loaded from disk: factorise the saved Hessian
                self._factorise()
            return self._solve(rhs.T).T
        return self._conjugate_gradient(rhs)

    # -- saving ----------------------------------------------------------------------------------
    def _explainer_state(self) -> dict[str, Any]:
        """The training gradients (the Hessian is learned state; the weights are the model's)."""
        if self.solver_ == "cg":
            raise LatentSurgeonError(
                "InfluenceFunctions.save: the conjugate-gradient solver reads the training data "
                "at every explain(), so a loaded one could not explain; save one fitted with "
                "solver='exact' (or 'auto' within max_exact_params), or fit it again after "
                "loading.")
        if not self.gradients_cached_:
            raise LatentSurgeonError(
                f"InfluenceFunctions.save: the training gradients were not kept after fit (they "
                f"need more than cache_mb={self.cache_mb} MiB), and without them a loaded one "
                "could not explain; fit with a larger cache_mb to save it.")
        assert self._train_gradients is not None
        return {"gradients": gradients_to_data(self._train_gradients),
                "linear": self._train_spec.linear,
                "bounds": [list(b) for b in self._train_bounds]}

    def _reattach(self, state: dict[str, Any], model: nn.Module) -> None:
        device = self._set_model(model)
        if self.hessian_ is not None:
            self.hessian_ = self.hessian_.to(device)
        if self.__dict__.get("factors_") is not None:
            self.factors_ = {m: {k: t.to(device) for k, t in f.items()}
                             for m, f in self.factors_.items()}
        gradients = state["gradients"]
        # files written before factored gradients hold the flat tensor itself
        self._train_gradients = (gradients.to(device) if isinstance(gradients, torch.Tensor)
                                 else gradients_from_data(gradients, device))
        self._train_spec.linear = self._test_spec.linear = state.get("linear")  # as fit found
        self._train_bounds = [(int(a), int(b)) for a, b in state["bounds"]]

    # -- scoring ---------------------------------------------------------------------------------
    def _explain(self, test: Any) -> torch.Tensor:
        model = self._model
        assert model is not None  # explain() refuses one loaded without its model
        with preserve_model_state(model):
            model.eval()
            test_grads, _ = self._gradient_matrix(self._test_spec, test, "test gradients")
            if self._train_gradients is not None:
                train_grads, bounds = self._train_gradients, self._train_bounds
            else:
                train_grads, bounds = self._compute_train_gradients()
            factored = isinstance(train_grads, LinearFactors)
            if factored and isinstance(test_grads, LinearFactors):
                return self._factored_scores(test_grads, train_grads, bounds)
            if factored:  # the test side could not be factored: compare flat gradients
                train_grads = train_grads.flat()
            if isinstance(test_grads, LinearFactors):
                test_grads = test_grads.flat()
            solved = self.inverse_hvp(test_grads)                    # (n_test, P)
        if not bounds:
            return solved.new_zeros(len(solved), 0).to("cpu")
        blocks = [-(solved @ train_grads[s:e].to(torch.float64).T) for s, e in bounds]
        return torch.cat(blocks, dim=1).to("cpu")

    def _factored_scores(self, test: LinearFactors, train: LinearFactors,
                         bounds: list[tuple[int, int]]) -> torch.Tensor:
        """K-FAC/EK-FAC scores of factored gradients, block by block as they were computed."""
        assert self.factors_ is not None and self.dampings_ is not None
        modules = getattr(self, "_modules", None)
        if modules is None:
            modules = self._modules = self._kronecker_modules()
        blocks = [-kfac.factored_scores(test, train[s:e], modules, self.factors_,
                                        self.dampings_) for s, e in bounds]
        if not blocks:
            return torch.zeros(len(test), 0, dtype=torch.float64)
        return torch.cat(blocks, dim=1).to("cpu")
