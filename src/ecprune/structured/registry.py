"""The registry of unit-removal methods by name: the only place where their names are read.

As :mod:`ecprune.methods.registry` for weight methods: ``get(name, **config)`` builds a
configured method from keyword options (by their :func:`ecprune.prune_neurons` name or the
method's field name; None means the default), and an option of another method is a
:class:`ecprune.methods.MethodOptionError` naming the methods it belongs to.
"""

from __future__ import annotations

from .._validation import check_positive_int
from ..methods.registry import METHOD_OPTIONS, MethodOptionError, build
from ..methods.registry import owners as weight_owners
from ..options import Options
from .methods import ECPRefitUnits, ECPUnits, MagnitudeUnits, NeuronMethod, OBSUnits, RandomUnits

NEURON_METHODS: dict[str, type[NeuronMethod]] = {
    cls.name: cls for cls in (ECPRefitUnits, ECPUnits, OBSUnits, MagnitudeUnits, RandomUnits)
}
# Every keyword option some unit-removal method takes.
NEURON_OPTIONS: tuple[str, ...] = tuple(dict.fromkeys(
    option for cls in NEURON_METHODS.values() for option in cls.OPTIONS))
# The run's options that prune_neurons takes (ecprune.Options but sharding: one process).
RUN_OPTIONS: tuple[str, ...] = ("layers", "output_fn", "chunk_size", "seed", "add_bias",
                                "progress")


def owners(option: str) -> list[str]:
    """Names of the unit-removal methods that take keyword option ``option``."""
    return [name for name, cls in NEURON_METHODS.items() if option in cls.OPTIONS]


def get(name: str | NeuronMethod, *, caller: str = "get", **config) -> NeuronMethod:
    """The unit-removal method called ``name`` configured with ``config``; an instance is
    returned as it is (then ``config`` must be empty).

    >>> get("ecp", shift="rows").shift
    'rows'
    """
    return build(NEURON_METHODS, NeuronMethod, name, caller=caller, config=config,
                 not_an_option=lambda method, key, value: _not_an_option_of(
                     method, key, value, caller))


def _not_an_option_of(name: str, key: str, value: object, caller: str) -> TypeError:
    found = owners(key)
    if found:
        return MethodOptionError(
            f"{key}={value!r} applies to method(s) {found} of {caller}, not {name!r}; drop it "
            "or choose one of those methods.")
    weights = weight_owners(key)
    if weights:
        return MethodOptionError(
            f"{key}={value!r} applies to the weight-pruning method(s) {weights} of "
            f"ecprune.prune, not to {caller}; drop it.")
    return TypeError(f"Method {name!r} of {caller} got an unknown option {key!r}; its options "
                     f"are {sorted(NEURON_METHODS[name].OPTIONS)}.")


def parse_options(method: str | NeuronMethod, options: dict,
                  caller: str) -> tuple[NeuronMethod, Options]:
    """The configured method and the run's :class:`ecprune.Options` from keyword options.

    Unknown keywords are a TypeError listing the valid ones; a weight method's option or an
    option of another unit-removal method is a TypeError naming the methods it belongs to.
    """
    known = set(RUN_OPTIONS) | set(NEURON_OPTIONS) | set(METHOD_OPTIONS)
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"{caller}() got unknown option(s) {unknown}; valid options are "
                        f"{[*RUN_OPTIONS, *NEURON_OPTIONS]}.")
    run = {key: value for key, value in options.items() if key in RUN_OPTIONS}
    config = {key: value for key, value in options.items() if key not in RUN_OPTIONS}
    parsed = Options(**run)
    check_positive_int("chunk_size", parsed.chunk_size, caller=caller)
    return get(method, caller=caller, **config), parsed
