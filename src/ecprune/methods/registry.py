"""The registry of methods by name: the only place where method names are read.

``get(name, **config)`` builds a configured method; options may be given by their keyword name
in :func:`ecprune.prune` (``refit_weighting``, ``nonlinear_samples``) or by the method's field
name (``weighting``, ``samples``). An option whose value is None means the method's default.
"""

from __future__ import annotations

import dataclasses

from .._validation import check_choice
from .admm import ECPADMM
from .base import Method, building_for
from .baselines import Gradient, Magnitude, MagnitudeCompensated, Random, Wanda
from .ecp import ECP, ECPNoCompensation, ECPRefit
from .nonlinear import Nonlinear
from .sparsegpt import SparseGPT, SparseGPTRefit

REGISTRY: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (ECP, ECPNoCompensation, Nonlinear, Magnitude, Gradient, Random,
                MagnitudeCompensated, ECPRefit, ECPADMM, SparseGPT, SparseGPTRefit, Wanda)
}
# Every keyword option some registered method takes.
METHOD_OPTIONS: tuple[str, ...] = tuple(dict.fromkeys(
    option for cls in REGISTRY.values() for option in cls.OPTIONS))


class MethodOptionError(TypeError, ValueError):
    """An option given to a method that does not use it (a TypeError, as for an unexpected
    keyword argument, and a ValueError, as it was before methods were objects)."""


def names(**flags: bool) -> list[str]:
    """Registered names, in order, of the methods whose class attributes equal ``flags``.

    >>> names(predicts_error=True)
    ['ecp', 'ecp-nocomp', 'nonlinear']
    """
    return [name for name, cls in REGISTRY.items()
            if all(getattr(cls, flag) == value for flag, value in flags.items())]


def owners(option: str) -> list[str]:
    """Names of the registered methods that take keyword option ``option``."""
    return [name for name, cls in REGISTRY.items() if option in cls.OPTIONS]


def applicable(method: str | Method, options: dict) -> dict:
    """The entries of ``options`` that ``method`` takes (for callers with one set of options
    for many methods, such as an experiment grid)."""
    cls = type(method) if isinstance(method, Method) else REGISTRY[method]
    return {key: value for key, value in options.items() if key in cls.OPTIONS}


def get(name: str | Method, *, caller: str = "get", **config) -> Method:
    """The method called ``name`` configured with ``config``; a :class:`Method` instance is
    returned as it is (then ``config`` must be empty: configure the instance instead).

    >>> get("ecp-refit", refit_weighting="sensitivity").weighting
    'sensitivity'
    """
    return build(REGISTRY, Method, name, caller=caller, config=config,
                 not_an_option=_not_an_option_of)


def build(registry: dict[str, type], base: type, name, *, caller: str, config: dict,
          not_an_option) -> object:
    """The configured method ``name`` of ``registry`` (classes derived from ``base``): option
    names or field names in ``config`` (None: the default); ``not_an_option(name, key,
    value)`` makes the error for a key the method does not take."""
    config = {key: value for key, value in config.items() if value is not None}
    if isinstance(name, base):
        if config:
            raise MethodOptionError(
                f"{caller}() got option(s) {sorted(config)} with a {type(name).__name__} "
                f"instance; configure the instance instead, e.g. "
                f"{type(name).__name__}({', '.join(f'{k}=...' for k in sorted(config))}).")
        return name
    if isinstance(name, type) and issubclass(name, base):
        raise TypeError(f"The 'method' parameter of {caller} is the class {name.__name__}; pass "
                        f"an instance, e.g. method={name.__name__}().")
    cls = registry[check_choice("method", name, registry, caller=caller)]
    fields = {field.name for field in dataclasses.fields(cls)}
    aliases = {**{field: field for field in fields}, **cls.OPTIONS}
    for key, value in config.items():
        if key not in aliases:
            raise not_an_option(name, key, value)
    with building_for(caller):
        return cls(**{aliases[key]: value for key, value in config.items()})


def _not_an_option_of(name: str, key: str, value: object) -> TypeError:
    found = owners(key)
    if not found:
        valid = sorted(REGISTRY[name].OPTIONS)
        return TypeError(f"Method {name!r} got an unknown option {key!r}; its options are "
                         f"{valid}.")
    return MethodOptionError(
        f"{key}={value!r} applies to method(s) {found}, not {name!r}; drop it or choose one of "
        f"those methods.")
