"""Generated heartbeat-like time series with labelled shapes, in the spirit of ECG5000.

ECG5000 (one heartbeat per series, 140 samples, z-normalised, five classes: normal, R-on-T
premature ventricular contraction, premature ventricular contraction, supraventricular premature
beat, unclassified) is a download; these series are generated, deterministic per seed and
nothing leaves the machine. Each beat is a sum of Gaussian waves (P, Q, R, S, T and one extra
wave) whose template depends on the class; every sample jitters the timing, width and amplitude
of its waves, stretches the beat in time, adds a slow baseline wander and white noise, and is
z-normalised like ECG5000's series.

They are synthetic shapes named after the arrhythmias they imitate, not physiological signals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from latentsurgeon._validation import Interval, Seed, validate_params
from latentsurgeon.errors import InvalidParameterError

__all__ = ["BEAT_CLASSES", "ECG5000_PROPORTIONS", "beat_templates", "beats"]

#: Class names, in label order (ECG5000's order, with a shape of our own for its fifth class).
BEAT_CLASSES = ("normal", "r_on_t", "pvc", "spb", "st_elevation")

#: ECG5000's class shares (2919, 1767, 96, 194, 24 of 5000 beats), for ``proportions=``.
ECG5000_PROPORTIONS = (0.5838, 0.3534, 0.0192, 0.0388, 0.0048)

# Waves per class: (centre, width, amplitude), centre and width as fractions of the window.
# Order: P, Q, R, S, T, extra.
_NORMAL = [(0.15, 0.025, 0.15), (0.30, 0.008, -0.12), (0.33, 0.010, 1.00),
           (0.36, 0.010, -0.25), (0.60, 0.045, 0.30), (0.50, 0.050, 0.00)]
_TEMPLATES = {
    "normal": _NORMAL,
    # R-on-T: a premature ventricular spike lands on the T wave of the beat
    "r_on_t": _NORMAL[:5] + [(0.62, 0.022, 0.90)],
    # PVC: no P wave, a wide and tall ventricular complex, a discordant (inverted) T wave
    "pvc": [(0.15, 0.025, 0.00), (0.26, 0.010, 0.00), (0.30, 0.030, 1.30),
            (0.38, 0.030, -0.50), (0.60, 0.060, -0.40), (0.50, 0.050, 0.00)],
    # SPB: an early, inverted P wave and an early narrow QRS with its T wave
    "spb": [(0.10, 0.020, -0.14), (0.22, 0.008, -0.10), (0.25, 0.010, 0.95),
            (0.28, 0.010, -0.25), (0.50, 0.045, 0.28), (0.50, 0.050, 0.00)],
    # ST elevation: the segment between S and T raised into a plateau
    "st_elevation": _NORMAL[:5] + [(0.47, 0.060, 0.35)],
}


def beat_templates(length: int = 140) -> torch.Tensor:
    """The noise-free class templates: ``(5, length)`` float64, one row per class of
    :data:`BEAT_CLASSES`, not normalised (R wave of a normal beat = 1)."""
    validate_params({"length": length}, {"length": Interval(int, 16, None)},
                    owner="beat_templates")
    params = torch.tensor([_TEMPLATES[name] for name in BEAT_CLASSES], dtype=torch.float64)
    t = torch.linspace(0.0, 1.0, length, dtype=torch.float64)
    return _waves(t, params[..., 0], params[..., 1], params[..., 2])


def _waves(t: torch.Tensor, centre: torch.Tensor, width: torch.Tensor,
           amplitude: torch.Tensor) -> torch.Tensor:
    """Sum over waves of ``amplitude * exp(-(t - centre)^2 / (2 width^2))``: ``(N, K)`` -> ``(N, T)``."""
    z = (t.view(1, 1, -1) - centre.unsqueeze(-1)) / width.unsqueeze(-1)
    return (amplitude.unsqueeze(-1) * torch.exp(-0.5 * z * z)).sum(dim=1)


def _class_counts(n: int, proportions: Sequence[float] | None) -> list[int]:
    k = len(BEAT_CLASSES)
    if proportions is None:
        shares = [1.0 / k] * k
    else:
        shares = [float(p) for p in proportions]
        if len(shares) != k or any(not math.isfinite(p) or p < 0 for p in shares) \
                or sum(shares) <= 0:
            raise InvalidParameterError(
                f"beats: proportions must be {k} non-negative finite numbers (one per class of "
                f"{BEAT_CLASSES}) with a positive sum; got {proportions!r}.")
        total = sum(shares)
        shares = [p / total for p in shares]
    exact = [p * n for p in shares]
    counts = [math.floor(e) for e in exact]
    # largest remainders first, lower class on ties: exactly n samples, deterministic
    order = sorted(range(k), key=lambda c: (-(exact[c] - counts[c]), c))
    for c in order[: n - sum(counts)]:
        counts[c] += 1
    return counts


def beats(
    n: int = 500,
    *,
    seed: int | torch.Generator | None = 0,
    length: int = 140,
    noise: float = 0.05,
    proportions: Sequence[float] | None = None,
    normalize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` labelled heartbeat-like series, deterministic per seed.

    Per sample, from its class template (:func:`beat_templates`): the whole beat shifts by
    ``N(0, 0.02)`` of the window and stretches in time by a factor in ``[0.92, 1.08]`` about the
    R wave; each wave's centre moves by ``N(0, 0.008)``, its width by a factor
    ``exp(N(0, 0.1))``, its amplitude by ``exp(N(0, 0.1))``; the beat's overall amplitude by
    ``exp(N(0, 0.1))``; a baseline wander ``a sin(2 pi f t + phi)`` with ``a`` in ``[0, 0.1]``,
    ``f`` in ``[0.2, 1]`` cycles per window; white noise of standard deviation ``noise``
    (relative to a normal R wave of 1). With ``normalize``, each series is then z-normalised
    (mean 0, standard deviation 1 over time), like ECG5000's.

    Args:
        n: number of series.
        seed: an int (reproducible), a ``torch.Generator`` or None (fresh randomness).
        length: samples per series (ECG5000: 140).
        noise: standard deviation of the white noise.
        proportions: class shares in :data:`BEAT_CLASSES` order (normalised to sum 1); None
            is class-balanced; :data:`ECG5000_PROPORTIONS` imitates ECG5000's imbalance. Class
            counts are exact (largest remainders), the order of the samples is shuffled.
        normalize: z-normalise each series.

    Returns:
        ``(series, labels)``: ``(n, length, 1)`` float32 and ``(n,)`` int64 in
        ``0..4`` (indices into :data:`BEAT_CLASSES`).
    """
    validate_params(
        {"n": n, "seed": seed, "length": length, "noise": noise},
        {"n": Interval(int, 1, None), "seed": Seed(), "length": Interval(int, 16, None),
         "noise": Interval(float, 0, None)}, owner="beats")
    counts = _class_counts(int(n), proportions)
    if isinstance(seed, torch.Generator):
        gen = seed
    else:
        gen = torch.Generator()
        if seed is None:
            gen.seed()
        else:
            gen.manual_seed(int(seed))

    labels = torch.repeat_interleave(torch.arange(len(BEAT_CLASSES)), torch.tensor(counts))
    labels = labels[torch.randperm(n, generator=gen)]
    params = torch.tensor([_TEMPLATES[name] for name in BEAT_CLASSES], dtype=torch.float64)
    centre, width, amplitude = (params[labels, :, i].clone() for i in range(3))
    k = centre.shape[1]

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(*shape, generator=gen, dtype=torch.float64)

    # the beat stretches about its R wave, then shifts as a whole; each wave jitters on its own
    anchor = centre[:, 2:3]
    centre = anchor + (centre - anchor) * uniform(0.92, 1.08, n, 1)
    centre = centre + 0.02 * normal(n, 1) + 0.008 * normal(n, k)
    width = width * torch.exp(0.1 * normal(n, k))
    amplitude = amplitude * torch.exp(0.1 * normal(n, k)) * torch.exp(0.1 * normal(n, 1))
    t = torch.linspace(0.0, 1.0, length, dtype=torch.float64)
    signal = _waves(t, centre, width, amplitude)
    wander = uniform(0.0, 0.1, n, 1) * torch.sin(
        2 * math.pi * uniform(0.2, 1.0, n, 1) * t + uniform(0.0, 2 * math.pi, n, 1))
    signal = signal + wander + noise * normal(n, length)
    if normalize:
        signal = (signal - signal.mean(dim=1, keepdim=True)) / signal.std(dim=1, keepdim=True)
    return signal.to(torch.float32).unsqueeze(-1).contiguous(), labels
