"""Every method's masks, weights and report on one seeded model equal the values saved before
the Method-object refactor (``tests/pin_methods.py`` wrote them with the code of that time)."""

from __future__ import annotations

import pytest
import torch

from pin_methods import CASES, PINS, run_case

PINNED = torch.load(PINS, weights_only=True)


@pytest.mark.parametrize(("label", "method", "steps", "options"), CASES,
                         ids=[case[0] for case in CASES])
def test_method_outputs_equal_the_pinned_ones(label, method, steps, options):
    got, want = run_case(method, steps, options), PINNED[label]
    assert got["state"].keys() == want["state"].keys()
    for key, value in want["state"].items():
        if key.endswith("weight_mask"):
            assert torch.equal(got["state"][key], value), key
        else:  # float64 values; a refactor may only reorder a few roundings
            torch.testing.assert_close(got["state"][key], value, rtol=1e-12, atol=1e-14)
    assert got["kept"] == want["kept"]
    assert got["predicted_error"] == approx(want["predicted_error"])
    assert got["thresholds"].keys() == want["thresholds"].keys()
    for name, threshold in want["thresholds"].items():
        assert got["thresholds"][name] == approx(threshold), name


def approx(value):
    """Equal to rounding for a float, exactly for None."""
    return value if value is None else pytest.approx(value, rel=1e-12, abs=1e-300)
