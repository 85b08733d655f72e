"""Method labels of an experiment grid: a library method plus options, e.g. ``"ecp-steps10"``.

A label is ``METHOD`` or ``METHOD-stepsK`` (``ecprune.prune(..., steps=K)``), where ``METHOD``
is one of ``ecprune.METHODS`` or of :data:`VARIANTS` (a method with options). Methods that are
scored once and pruned at every ratio from the same scores (the paper's) keep that fast path;
the others (``steps``, weight updates that need the data) are pruned once per ratio.
"""

from __future__ import annotations

import copy
import re
import time
from dataclasses import dataclass

import torch
from torch import nn

import ecprune
from ecprune import methods


@dataclass(frozen=True)
class MethodSpec:
    """How one label prunes: ``method`` with ``options``, in ``steps`` steps."""

    method: str
    steps: int = 1
    options: tuple[tuple[str, object], ...] = ()

    @property
    def scores_once(self) -> bool:
        """Scored once, pruned at every ratio from those scores (no data-driven update)."""
        return self.steps == 1 and not self.options and not self.pruner().rereads_data

    def pruner(self, **shared) -> methods.Method:
        """The configured method: its own options, plus those of ``shared`` it takes."""
        return methods.get(self.method, **methods.applicable(self.method, shared),
                           **dict(self.options))


# Named variants: a library method with options (issue 9's comparison).
VARIANTS: dict[str, MethodSpec] = {
    "ecp-refit-sensitivity": MethodSpec("ecp-refit",
                                        options=(("refit_weighting", "sensitivity"),)),
    "ecp-refit-global": MethodSpec("ecp-refit", options=(("allocation", "global"),)),
}
STEPS = re.compile(r"(?P<base>.+)-steps(?P<steps>[1-9]\d*)")


def parse_label(label: str) -> MethodSpec | None:
    """The :class:`MethodSpec` of ``label``, or None if it names no method.

    >>> parse_label("ecp-steps10")
    MethodSpec(method='ecp', steps=10, options=())
    """
    match = STEPS.fullmatch(label)
    base, steps = (match["base"], int(match["steps"])) if match else (label, 1)
    if base in ecprune.METHODS:
        return MethodSpec(base, steps=steps)
    if base in VARIANTS:
        return MethodSpec(VARIANTS[base].method, steps, VARIANTS[base].options)
    return None


def check_labels(labels: tuple[str, ...]) -> None:
    """ValueError naming the unknown labels and the valid forms."""
    unknown = [label for label in labels if parse_label(label) is None]
    if unknown:
        raise ValueError(f"Unknown method(s) {unknown}; expected METHOD or METHOD-stepsK with "
                         f"METHOD one of {[*ecprune.METHODS, *VARIANTS]}.")


def prune_copy(dense: nn.Module, data: object, ratio: float, spec: MethodSpec, *,
               seed: int, loss: str, nonlinear_samples: int) -> tuple[nn.Module, float]:
    """A copy of ``dense`` pruned to ``ratio`` by ``spec`` on ``data``, and the seconds spent
    (scoring, every step and every weight update)."""
    model = copy.deepcopy(dense)
    start = time.perf_counter()
    method = spec.pruner(loss=loss, nonlinear_samples=nonlinear_samples)
    ecprune.prune(model, data, ratio, method, steps=spec.steps, seed=seed, progress=False)
    return model, time.perf_counter() - start


def masked_template(model: nn.Module) -> nn.Module:
    """``model`` with every ``nn.Linear`` reparametrised by an all-ones mask, so that the state
    dict of a pruned copy loads into it."""
    for layer in model.modules():
        if isinstance(layer, nn.Linear) and not hasattr(layer, "weight_mask"):
            torch.nn.utils.prune.identity(layer, "weight")
    return model
