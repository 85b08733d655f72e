"""Unit removal on token layers: a Linear called once per forward on (batch, tokens, features).

Oracles in float64 that share no code with ecprune: per-sample Jacobians of the token mixing by
``torch.func.jacrev``, least squares by ``torch.linalg.lstsq`` on materialised rows, the
linearised output change by ``torch.autograd.functional.jvp`` (double backward), and masks written by hand.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.autograd.functional import jvp
from torch.func import jacrev

import ecprune
from ecprune.structured import score_units

SAMPLES, TOKENS, FEATURES, HIDDEN, OUT = 12, 4, 5, 6, 3
# Sums over 12 samples of O(1) float64 terms: rounding ~1e-15; the joint shift's solve of a
# 3 x 3 system with a condition number below 1e3 loses three more digits at most.
RTOL = 1e-10


def mix(u: torch.Tensor) -> torch.Tensor:
    """Tokens weigh each other: (..., T, n) -> (..., n) by a softmax over the tokens."""
    return (torch.softmax(u.sum(-1, keepdim=True), -2) * u).sum(-2)


class TokenMLP(nn.Module):
    """``mix(fc2(gelu(fc1(x))))`` on x of shape (B, T, F)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.fc1, self.fc2 = nn.Linear(FEATURES, HIDDEN), nn.Linear(HIDDEN, OUT)

    def forward(self, x):
        return mix(self.fc2(nn.functional.gelu(self.fc1(x))))


class DeepTokenMLP(nn.Module):
    """Two per-token hidden layers, then the mean over the tokens and a head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.fc1, self.fc2 = nn.Linear(FEATURES, 8), nn.Linear(8, 6)
        self.head = nn.Linear(6, OUT)

    def forward(self, x):
        h = torch.tanh(self.fc2(torch.tanh(self.fc1(x))))
        return self.head(h.mean(1))


def tokens(seed: int = 0) -> torch.Tensor:
    return torch.randn(SAMPLES, TOKENS, FEATURES, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(seed))


def model_and_data():
    return TokenMLP().double(), tokens()


def oracle_terms(model: TokenMLP, x: torch.Tensor):
    """Per sample ``G = sum_p J_p`` (B, n_y, N) and ``H_j = sum_p J_p W[:, j] a_jp``
    (B, n_y, H); the activations ``a`` (B, T, H) and pre-activations ``u`` (B, T, N)."""
    with torch.no_grad():
        a = nn.functional.gelu(model.fc1(x))
        u = model.fc2(a)
    jac = torch.stack([jacrev(mix)(u_x) for u_x in u])  # (B, n_y, T, N)
    weight = model.fc2.weight.detach()
    g = jac.sum(2)
    h = torch.einsum("bytn,nj,btj->byj", jac, weight, a)
    return g, h, a, u


def test_joint_score_and_shift_equal_least_squares_over_per_sample_jacobians():
    model, x = model_and_data()
    scored = score_units(model, x, "ecp", shift="joint").scores["fc1"]
    g, h, _, _ = oracle_terms(model, x)
    design = g.reshape(-1, OUT)
    for j in range(HIDDEN):
        target = h[:, :, j].reshape(-1, 1)
        delta = torch.linalg.lstsq(design, target).solution
        error = (design @ delta - target).square().sum() / SAMPLES
        torch.testing.assert_close(scored.shifts["fc2"][:, j], delta[:, 0], rtol=RTOL, atol=0)
        torch.testing.assert_close(scored.score[j], error, rtol=RTOL, atol=0)


def test_the_joint_shift_minimises_the_linearised_output_change():
    """With the shift applied to the bias and the column removed, the exact linearised change
    of every sample's output (a jvp of the mixing) has the scored mean square, and a scan of the
    shift along a random direction finds no lower value."""
    model, x = model_and_data()
    scored = score_units(model, x, "ecp", shift="joint").scores["fc1"]
    _, _, a, u = oracle_terms(model, x)
    weight = model.fc2.weight.detach()
    direction = torch.randn(OUT, dtype=torch.float64, generator=torch.Generator().manual_seed(3))

    def linearised(j: int, delta: torch.Tensor) -> torch.Tensor:
        change = delta - a[..., j:j + 1] * weight[:, j]  # (B, T, N)
        return torch.stack([jvp(mix, u_x, c_x)[1] for u_x, c_x in zip(u, change,
                                                                             strict=True)])

    for j in range(HIDDEN):
        best = scored.shifts["fc2"][:, j]
        at_best = linearised(j, best).square().sum() / SAMPLES
        torch.testing.assert_close(at_best, scored.score[j], rtol=RTOL, atol=0)
        scan = [linearised(j, best + t * direction).square().sum() / SAMPLES
                for t in torch.linspace(-1, 1, 21, dtype=torch.float64)]
        assert min(scan) >= at_best * (1 - 1e-12)


def test_rows_score_and_shift_are_each_rows_own_least_squares():
    model, x = model_and_data()
    scored = score_units(model, x, "ecp", shift="rows").scores["fc1"]
    g, h_rows, a, _ = oracle_terms(model, x)
    jac = torch.stack([jacrev(mix)(u_x) for u_x in oracle_terms(model, x)[3]])
    weight = model.fc2.weight.detach()
    for j in range(HIDDEN):
        score = torch.zeros((), dtype=torch.float64)
        for i in range(OUT):
            column = g[:, :, i].reshape(-1, 1)  # G_i per sample
            target = (weight[i, j] * torch.einsum("byt,bt->by", jac[:, :, :, i],
                                                  a[:, :, j])).reshape(-1, 1)
            delta = torch.linalg.lstsq(column, target).solution
            score += (column @ delta - target).square().sum() / SAMPLES
            torch.testing.assert_close(scored.shifts["fc2"][i, j], delta[0, 0], rtol=RTOL,
                                       atol=0)
        torch.testing.assert_close(scored.score[j], score, rtol=RTOL, atol=0)
    assert h_rows.shape == (SAMPLES, OUT, HIDDEN)


def test_structured_refit_is_least_squares_on_every_token_row():
    model, x = model_and_data()
    dense = copy.deepcopy(model)
    report = ecprune.prune_neurons(model, x, 0.5, "ecp-refit", scope="layer", damping=0.0)
    removed = list(report.groups["fc1"].removed)
    kept = [j for j in range(HIDDEN) if j not in removed]
    with torch.no_grad():
        a = nn.functional.gelu(dense.fc1(x)).reshape(-1, HIDDEN)  # (B T, H)
        target = dense.fc2(a)
    design = torch.cat([a[:, kept], torch.ones(len(a), 1, dtype=a.dtype)], 1)
    solution = torch.linalg.lstsq(design, target).solution  # (K + 1, N)
    torch.testing.assert_close(model.fc2.weight.detach(), solution[:-1].T, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(model.fc2.bias.detach(), solution[-1], rtol=1e-9, atol=1e-12)


def test_shrunk_model_equals_the_masked_model_with_the_same_shifts():
    model, x = model_and_data()
    masked = copy.deepcopy(model)
    scored = score_units(model, x, "ecp", shift="joint").scores["fc1"]
    report = ecprune.prune_neurons(model, x, 0.5, "ecp", scope="layer", shift="joint")
    removed = list(report.groups["fc1"].removed)
    with torch.no_grad():
        masked.fc2.bias += scored.shifts["fc2"][:, removed].sum(1)
        masked.fc2.weight[:, removed] = 0
    assert (model.fc1.out_features, model.fc2.in_features) == (3, 3)
    with torch.no_grad():
        torch.testing.assert_close(model(x), masked(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", ["ecp", "ecp-refit", "obs", "magnitude", "random"])
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_every_method_removes_exactly_the_asked_units_of_token_layers(method, scope):
    model, x = DeepTokenMLP().double(), tokens(1)
    report = ecprune.prune_neurons(model, x, 0.5, method, scope)
    assert report.skipped == {} and report.total_units == 14
    assert report.removed_units == 7
    if scope == "layer":
        assert report.widths == {"fc1": 4, "fc2": 3}
    assert model.fc2.in_features == report.widths["fc1"]
    assert model.head.in_features == report.widths["fc2"]
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()


def test_compensation_helps_on_token_layers():
    errors = {}
    for method in ("ecp", "ecp-refit", "magnitude"):
        model, x = model_and_data()
        errors[method] = ecprune.prune_neurons(model, x, 0.5, method, "layer").measured_error
    assert errors["ecp-refit"] <= errors["ecp"] < errors["magnitude"]


def test_one_token_gives_the_scores_of_the_one_row_path():
    """On (B, 1, F) the token path computes what the one-row path computes on (B, F)."""
    tokens_model = DeepTokenMLP().double()
    flat = nn.Sequential(tokens_model.fc1, nn.Tanh(), tokens_model.fc2, nn.Tanh(),
                         tokens_model.head)
    x = tokens(1)[:, :1]
    for shift in ("joint", "rows"):
        got = score_units(tokens_model, x, "ecp", shift=shift).scores
        expected = score_units(flat, x[:, 0], "ecp", shift=shift).scores
        for name, other in (("fc1", "0"), ("fc2", "2")):
            torch.testing.assert_close(got[name].score, expected[other].score, rtol=1e-12,
                                       atol=1e-15)


def all_signs(shape, probes, generator, *, dtype, device):
    """Every sign vector of the outputs, the same for each sample: sum_k z_k z_k^T = I
    exactly, so Hutchinson's sums equal the exact ones (replaces the random draw)."""
    batch, count, n_out = shape
    assert count == 2 ** n_out
    signs = torch.cartesian_prod(*[torch.tensor([-1.0, 1.0], dtype=dtype)] * n_out)
    return (signs / count ** 0.5).to(device).expand(batch, count, n_out)


@pytest.mark.parametrize("shift", ["joint", "rows"])
def test_probes_on_token_layers_estimate_the_exact_sums(shift, monkeypatch):
    """Hutchinson's probes run through the token path: with random signs the scores differ
    from the exact ones; with every sign vector (whose outer products sum to the identity)
    they equal them."""
    model, x = model_and_data()
    exact = score_units(model, x, "ecp", shift=shift).scores["fc1"]
    random = score_units(model, x, "ecp", shift=shift, sensitivity="hutchinson",
                         probes=2 ** OUT).scores["fc1"]
    assert not torch.allclose(random.score, exact.score, rtol=1e-3)
    for where in ("structured.moments", "engine.statistics"):  # joint, rows
        monkeypatch.setattr(f"ecprune.{where}.rademacher", all_signs)
    enumerated = score_units(model, x, "ecp", shift=shift, sensitivity="hutchinson",
                             probes=2 ** OUT).scores["fc1"]
    torch.testing.assert_close(enumerated.score, exact.score, rtol=RTOL, atol=0)
    torch.testing.assert_close(enumerated.shifts["fc2"], exact.shifts["fc2"], rtol=RTOL,
                               atol=1e-14)


def test_fraction_zero_changes_nothing_on_token_layers():
    model, x = model_and_data()
    before = copy.deepcopy(model.state_dict())
    report = ecprune.prune_neurons(model, x, 0)
    assert report.removed_units == 0 and report.total_units == HIDDEN
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


class TwiceOnTokens(nn.Module):
    """``b`` runs twice per forward on token inputs: its group is left alone."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.a, self.b, self.c = nn.Linear(FEATURES, 6), nn.Linear(6, 6), nn.Linear(6, OUT)

    def forward(self, x):
        return mix(self.c(torch.tanh(self.b(torch.tanh(self.b(torch.tanh(self.a(x))))))))


class DeepONet(nn.Module):
    """Branch on each sample, trunk on query points that every sample shares."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.branch1, self.branch2 = nn.Linear(FEATURES, 6), nn.Linear(6, 4)
        self.trunk1, self.trunk2 = nn.Linear(1, 6), nn.Linear(6, 4)
        self.register_buffer("points", torch.linspace(0, 1, 7)[:, None])

    def forward(self, x):
        branch = self.branch2(torch.tanh(self.branch1(x)))  # (B, 4)
        trunk = self.trunk2(torch.tanh(self.trunk1(self.points)))  # (P, 4)
        return branch @ trunk.T


def test_a_layer_applied_twice_on_tokens_is_still_skipped_with_the_reason():
    model = TwiceOnTokens().double()
    before = copy.deepcopy(model.state_dict())
    report = ecprune.prune_neurons(model, tokens(), 0.5, "ecp")
    assert list(report.skipped) == ["a"] and report.total_units == 0
    assert "'b' runs 2 time(s) per forward" in report.skipped["a"]
    assert "(batch, tokens, features)" in report.skipped["a"]
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_rows_shared_by_the_samples_are_still_skipped_with_the_reason():
    model = DeepONet().double()
    x = torch.randn(SAMPLES, FEATURES, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(4))
    report = ecprune.prune_neurons(model, x, 0.5, "ecp", scope="layer")
    assert list(report.skipped) == ["trunk1"]
    assert "not one block per sample" in report.skipped["trunk1"]
    assert report.widths == {"branch1": 3}
    assert model.trunk1.out_features == 6
