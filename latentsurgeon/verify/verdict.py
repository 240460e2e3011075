"""The verdict: per criterion and overall, ``removed``, ``reduced`` or ``not removed``, each
against a documented threshold (:data:`THRESHOLDS`), with the reason in one line.

A criterion is one figure of one test where *larger means more reliance*. It is judged on its
interval (the bootstrap over test samples, or the t-interval over training seeds) and, when the
certificate has a reference model (the uncorrected one), on the ratio ``figure / reference``,
bootstrapped with the same resamples (pairs kept):

* ``removed``: the interval's upper bound is at most ``removed_below`` (an absolute level), or the
  ratio's upper bound is at most ``removed_ratio``;
* ``reduced``: not removed, but the ratio is at most ``reduced_ratio`` and its upper bound is
  below 1 (a reduction the data support);
* ``not removed``: neither.

A criterion with neither an absolute level nor a reference is reported and not judged.

Overall: ``removed`` when every judged criterion is; ``not removed`` when insertion is (the
artifact still changes other classes' decisions: the behavioural definition of a shortcut) or
when no judged criterion is better than ``not removed``; else ``reduced``. So a correction that
hides the artifact from one test (a gradient blocked on the artifact hides it from relevance)
is caught by another, and one whose tests disagree is at best ``reduced``, with the disagreeing
test named in the reason.

The levels were set on the bundled watermark digits (docs/verify.md lists the figures they rest
on, seeds 0 to 4): a model trained without the artifact flips 0.2 to 1.8 % of other-class images
under insertion (upper bounds 0.7 to 3.3 %; the uncorrected model 21 to 33 %), so 5 % is the level
of "no reliance"; under removal its shortcut-class probability falls by -1.3 to 2.4 % (upper bounds
up to 5.2 %; the uncorrected model 3.9 to 13.3 %), so 10 %. Removal works with the shortcut
class's images only (49 here) and their class evidence is strong, so it is the weaker test: on
one of the five seeds the uncorrected model's removal figure (3.9 %) cannot be told from the
clean model's. Insertion decides.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from latentsurgeon.errors import InvalidParameterError
from latentsurgeon.metrics.intervals import Estimate

__all__ = ["THRESHOLDS", "VERDICTS", "Judgement", "Threshold", "judge", "overall_verdict",
           "verdict_rank"]

VERDICTS = ("removed", "reduced", "not removed")


@dataclass(frozen=True)
class Threshold:
    """How one criterion is judged (see the module docstring).

    Attributes:
        test, figure: where the criterion's figure comes from (``"insertion"``, ``"flip_rate"``).
        removed_below: absolute level of "removed" for the interval's upper bound (None: none).
        removed_ratio: level of "removed" for the ratio to the reference (None: none).
        reduced_ratio: the ratio to the reference at or below which the figure is "reduced".
        meaning: what the figure is, in words, for the reason line.
        percent: the figure is a share (printed in %).
    """

    test: str
    figure: str
    removed_below: float | None
    removed_ratio: float | None
    reduced_ratio: float
    meaning: str
    percent: bool = True

    def __post_init__(self) -> None:
        for name in ("removed_below", "removed_ratio", "reduced_ratio"):
            value = getattr(self, name)
            if value is None and name != "reduced_ratio":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value < 0:
                raise InvalidParameterError(
                    f"Threshold {self.test}.{self.figure}: {name} must be a finite number >= 0"
                    f"{' or None' if name != 'reduced_ratio' else ''}; got {value!r}.")
        if not 0 < self.reduced_ratio <= 1:
            raise InvalidParameterError(
                f"Threshold {self.test}.{self.figure}: reduced_ratio must lie in (0, 1] (a "
                f"share of the reference's figure); got {self.reduced_ratio!r}.")

    def describe(self) -> str:
        parts = []
        if self.removed_below is not None:
            shown = f"{self.removed_below:.0%}" if self.percent else f"{self.removed_below:g}"
            parts.append(f"removed: upper bound <= {shown}")
        if self.removed_ratio is not None:
            parts.append(f"removed: ratio to the reference <= {self.removed_ratio:g} (upper "
                         "bound)")
        parts.append(f"reduced: ratio <= {self.reduced_ratio:g}, upper bound < 1")
        return "; ".join(parts)


THRESHOLDS: Mapping[str, Threshold] = {
    "insertion": Threshold("insertion", "flip_rate", 0.05, None, 0.5,
                           "of other-class images flip to the shortcut class when the artifact "
                           "is pasted (beyond a neutral fill)"),
    "removal": Threshold("removal", "score_drop", 0.10, None, 0.5,
                         "mean fall of the shortcut class's probability when the artifact is "
                         "removed from its images"),
    "relevance": Threshold("relevance", "share", None, 0.5, 0.8,
                           "of the shortcut class's input relevance lies on the artifact"),
}


@dataclass(frozen=True)
class Judgement:
    """One criterion's verdict (None: not judged) and its reason in one line."""

    criterion: str
    verdict: str | None
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def verdict_rank(verdict: str) -> int:
    """0 for ``removed``, 1 ``reduced``, 2 ``not removed``."""
    if verdict not in VERDICTS:
        raise InvalidParameterError(
            f"verdict must be one of {', '.join(VERDICTS)}; got {verdict!r}.")
    return VERDICTS.index(verdict)


def judge(name: str, threshold: Threshold, figure: Estimate, ratio: Estimate | None
          ) -> Judgement:
    """The verdict of one criterion from its figure's estimate and (optionally) the estimate of
    its ratio to the reference."""
    shown = figure.format(percent=threshold.percent)
    ratio_text = f"; {ratio.value:.2f}x the reference [{ratio.low:.2f}, {ratio.high:.2f}]" \
        if ratio is not None else ""
    line = f"{name}: {shown} {threshold.meaning}{ratio_text}"
    if threshold.removed_below is not None and figure.high <= threshold.removed_below:
        return Judgement(name, "removed", line)
    if ratio is not None:
        if threshold.removed_ratio is not None and ratio.high <= threshold.removed_ratio:
            return Judgement(name, "removed", line)
        if ratio.value <= threshold.reduced_ratio and ratio.high < 1.0:
            return Judgement(name, "reduced", line)
    elif threshold.removed_below is None:
        return Judgement(name, None, line + " (not judged: needs a reference model)")
    return Judgement(name, "not removed", line)


def overall_verdict(judgements: Mapping[str, Judgement]) -> tuple[str, str]:
    """``(verdict, reason)`` over the judged criteria (see the module docstring)."""
    judged = {k: j for k, j in judgements.items() if j.verdict is not None}
    if not judged:
        raise InvalidParameterError("overall verdict: no criterion could be judged.")
    verdicts = {k: j.verdict for k, j in judged.items()}
    if all(v == "removed" for v in verdicts.values()):
        return "removed", "every criterion: removed"
    if verdicts.get("insertion") == "not removed":
        return "not removed", "insertion: the artifact still sends other classes' images to " \
                              "the shortcut class"
    if all(v == "not removed" for v in verdicts.values()):
        return "not removed", "no criterion shows a reduction"
    short = [f"{k}: {v}" for k, v in verdicts.items() if v != "removed"]
    return "reduced", "not every criterion removed (" + ", ".join(short) + ")"
