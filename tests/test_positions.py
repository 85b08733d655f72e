"""Exact ECP for layers with several rows per sample (tokens, shared query points, repeated
calls) against a per-sample ``torch.func.jacrev`` oracle in float64."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import ecprune
from conftest import bias_jacobians, weight_jacobians
from ecprune.engine.positions import layouts


class DeepONet(nn.Module):
    """Branch 6-12-8 on the sample, trunk 1-12-8 on 7 query points shared by every sample."""

    def __init__(self):
        super().__init__()
        self.branch = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 8))
        self.trunk = nn.Sequential(nn.Linear(1, 12), nn.Tanh(), nn.Linear(12, 8), nn.Tanh())
        self.register_buffer("points", torch.linspace(0, 1, 7)[:, None])

    def forward(self, x):
        return self.branch(x) @ self.trunk(self.points).T  # (B, 7)


class TokenMLP(nn.Module):
    """A per-token MLP on (B, T, F) with softmax mixing across tokens."""

    def __init__(self, tokens=5, features=4):
        super().__init__()
        self.inp, self.out = nn.Linear(features, 6), nn.Linear(6, 3)
        self.mix = nn.Parameter(torch.randn(tokens, tokens))
        self.shape = (tokens, features)

    def forward(self, x):
        h = torch.tanh(self.inp(x.reshape(-1, *self.shape)))  # (B, T, 6)
        h = torch.softmax(self.mix, -1) @ h
        return self.out(h).mean(1)


class TransformerBlock(nn.Module):
    """Self-attention and a feed-forward block with LayerNorms, on (B, T, D)."""

    def __init__(self, tokens=4, dim=6):
        super().__init__()
        self.tokens, self.dim = tokens, dim
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 10), nn.GELU(), nn.Linear(10, dim))
        self.head = nn.Linear(dim, 2)

    def forward(self, x):
        x = x.reshape(-1, self.tokens, self.dim)
        q, k, v = self.qkv(self.norm1(x)).chunk(3, -1)
        attention = torch.softmax(q @ k.transpose(-1, -2) / self.dim ** 0.5, -1)
        x = x + self.proj(attention @ v)
        x = x + self.ff(self.norm2(x))
        return self.head(x[:, 0])


class MixerBlock(nn.Module):
    """MLP-Mixer: token mixing on the transposed tensor, then channel mixing."""

    def __init__(self, tokens=4, channels=5):
        super().__init__()
        self.tokens, self.channels = tokens, channels
        self.token_mix = nn.Sequential(nn.Linear(tokens, 7), nn.GELU(), nn.Linear(7, tokens))
        self.channel_mix = nn.Sequential(nn.Linear(channels, 6), nn.GELU(), nn.Linear(6, channels))
        self.head = nn.Linear(channels, 3)

    def forward(self, x):
        x = x.reshape(-1, self.tokens, self.channels)
        x = x + self.token_mix(x.transpose(1, 2)).transpose(1, 2)
        x = x + self.channel_mix(x)
        return self.head(x.mean(1))


class Twice(nn.Module):
    """One Linear applied twice with a residual."""

    def __init__(self):
        super().__init__()
        self.inp, self.shared, self.head = nn.Linear(3, 5), nn.Linear(5, 5), nn.Linear(5, 2)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        h = h + torch.tanh(self.shared(h))
        h = h + torch.tanh(self.shared(h))
        return self.head(h)


class NeuralODE(nn.Module):
    """Fixed-step RK4 of an MLP vector field, then a readout."""

    def __init__(self, steps=3):
        super().__init__()
        self.field = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 3))
        self.readout = nn.Linear(3, 2)
        self.steps = steps

    def forward(self, x):
        h, dt = x, 0.2
        for _ in range(self.steps):
            k1 = self.field(h)
            k2 = self.field(h + dt / 2 * k1)
            k3 = self.field(h + dt / 2 * k2)
            k4 = self.field(h + dt * k3)
            h = h + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        return self.readout(h)


MODELS = {
    "deeponet": (DeepONet, 6),
    "token-mlp": (TokenMLP, 20),
    "transformer": (TransformerBlock, 24),
    "mixer": (MixerBlock, 20),
    "twice": (Twice, 3),
    "neural-ode": (NeuralODE, 3),
}


def build(kind: str, n: int = 30, seed: int = 0):
    cls, width = MODELS[kind]
    torch.manual_seed(seed)
    model = cls().double()
    x = torch.randn(n, width, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return model, x


def ecp_oracle(model: nn.Module, name: str, x: torch.Tensor):
    """``I`` and ``delta*`` of layer ``name`` from per-sample Jacobians of the output with
    respect to its weight and bias (all rows and calls included by autograd)."""
    g = bias_jacobians(model, name, x).detach()  # (N, n_y, n_out)
    h = weight_jacobians(model, name, x).detach()  # (N, n_y, n_out, n_in)
    s = g.square().sum(1).mean(0)[:, None]
    p = (g[..., None] * h).sum(1).mean(0)
    q = h.square().sum(1).mean(0)
    w = model.get_submodule(name).weight.detach()
    alive = s > 1e-20 * s.max()  # a bias the output cannot see (a key's, under softmax): no shift
    return (w.square() * (q - torch.where(alive, p.square() / s, 0)),
            torch.where(alive, w * p / s, 0))


@pytest.mark.parametrize("kind", list(MODELS))
def test_scores_and_shifts_equal_the_per_sample_jacobian_oracle(kind):
    model, x = build(kind)
    result = ecprune.importance(model, x, "ecp", sensitivity="exact", chunk_size=7)
    assert not all(layouts(model, dict(_linears(model)), x, None).values())
    for name, found in result.items():
        importance, shift = ecp_oracle(model, name, x)
        # 1e-10 relative to the layer's largest value: float64 sums in another order
        torch.testing.assert_close(found.score, importance, rtol=1e-10,
                                   atol=1e-10 * importance.abs().max().item())
        torch.testing.assert_close(found.bias_shift, shift, rtol=1e-10,
                                   atol=1e-10 * shift.abs().max().item())


@pytest.mark.parametrize("kind", list(MODELS))
def test_bfloat16_products_stay_within_a_few_bfloat16_roundoffs_of_the_oracle(kind):
    """``products="bfloat16"`` rounds ``c`` and ``a`` to bfloat16 (unit roundoff 2^-8) for the
    per-sample products of ``Q = E|H|^2``: scores within 4 roundoffs of each layer's largest
    oracle value, and not equal to the float64 ones (the bfloat16 GEMMs ran); the shifts, from
    ``P = E[G . H]``, one GEMM in the model's dtype, equal the oracle's."""
    model, x = build(kind)
    result = ecprune.importance(model, x, "ecp", sensitivity="exact", products="bfloat16",
                                chunk_size=7)
    for name, found in result.items():
        importance, shift = ecp_oracle(model, name, x)
        error = (found.score - importance).abs().max() / importance.abs().max()
        assert 1e-8 < error <= 4 * 2.0**-8
        torch.testing.assert_close(found.bias_shift, shift, rtol=1e-10, atol=1e-10 * shift.abs().max())


def test_an_unknown_products_value_is_refused():
    model, x = build("token-mlp")
    with pytest.raises(ValueError, match=r"'products'.*'model', 'bfloat16'. Got 'half'"):
        ecprune.importance(model, x, "ecp", products="half")


def _linears(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]


@pytest.mark.parametrize(("kind", "name"), [("token-mlp", "inp"), ("twice", "shared")])
def test_the_cross_position_terms_matter(kind, name):
    """Treating rows as samples (positions="independent") is off by more than 1 % of the
    layer's largest score (eight orders above the exact path's agreement with the oracle) when
    the rows of a sample reach the same outputs (tokens averaged, a layer applied twice)."""
    model, x = build(kind)
    exact = ecprune.importance(model, x, "ecp", sensitivity="exact")[name].score
    rows = ecprune.importance(model, x, "ecp", sensitivity="exact", positions="independent")
    assert (rows[name].score - exact).abs().max() > 1e-2 * exact.abs().max()


def test_rows_that_reach_separate_outputs_have_no_cross_terms():
    """The DeepONet's trunk row of point k reaches output k only (and the branch has one row
    per sample): there the independent form is exact, a check of both forms."""
    model, x = build("deeponet")
    exact = ecprune.importance(model, x, "ecp", sensitivity="exact", positions="exact")
    rows = ecprune.importance(model, x, "ecp", sensitivity="exact", positions="independent")
    for name in exact:
        torch.testing.assert_close(rows[name].score, exact[name].score, rtol=1e-9, atol=1e-15)


def test_one_row_layers_take_the_fast_path_and_agree_with_the_general_one(tiny):
    model, x = tiny
    assert all(layouts(model, dict(_linears(model)), x, None).values())
    fast = ecprune.importance(model, x, "ecp", sensitivity="exact")
    general = ecprune.importance(model, x, "ecp", sensitivity="exact", positions="exact")
    for name in fast:
        torch.testing.assert_close(general[name].score, fast[name].score, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(general[name].bias_shift, fast[name].bias_shift,
                                   rtol=1e-10, atol=1e-14)


def test_rows_that_do_not_follow_the_batch_are_not_taken_for_samples():
    """A reshape (B, T*F) -> (B*T, F) before a Linear: 2-D input, but T rows per sample."""

    class Flattened(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.out = nn.Linear(2, 4), nn.Linear(12, 2)

        def forward(self, x):
            h = torch.tanh(self.inp(x.reshape(-1, 2)))  # (B*3, 4)
            return self.out(h.reshape(-1, 12))

    torch.manual_seed(0)
    model = Flattened().double()
    x = torch.randn(25, 6, dtype=torch.float64)
    assert layouts(model, dict(_linears(model)), x, None) == {"inp": False, "out": True}
    result = ecprune.importance(model, x, "ecp", sensitivity="exact")
    importance, shift = ecp_oracle(model, "inp", x)
    torch.testing.assert_close(result["inp"].score, importance, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(result["inp"].bias_shift, shift, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("kind", ["deeponet", "token-mlp", "twice"])
def test_hutchinson_probes_are_unbiased_with_positions(kind):
    model, x = build(kind, n=12)
    exact = ecprune.importance(model, x, "ecp", sensitivity="exact")
    runs = [ecprune.importance(model, x, "ecp", sensitivity="hutchinson", probes=4, seed=seed)
            for seed in range(60)]
    for name in exact:
        mean = torch.stack([r[name].bias_shift for r in runs]).mean(0)
        spread = torch.stack([r[name].bias_shift for r in runs]).std(0) / len(runs) ** 0.5
        assert ((mean - exact[name].bias_shift).abs() <= 5 * spread + 1e-12).all()


def test_chunk_sizes_agree_with_positions():
    model, x = build("transformer", n=21)
    results = [ecprune.importance(model, x, "ecp", sensitivity="exact", chunk_size=c)
               for c in (1, 7, 21)]
    for other in results[1:]:
        for name, found in results[0].items():
            torch.testing.assert_close(other[name].score, found.score, rtol=1e-9, atol=1e-14)


def test_a_brute_force_scan_of_the_shift_finds_the_same_minimum():
    """For a few trunk weights of the DeepONet, the linearised objective
    E||delta G - W H||^2 scanned over delta is smallest at delta* and equals I there."""
    model, x = build("deeponet")
    result = ecprune.importance(model, x, "ecp", sensitivity="exact")
    g = bias_jacobians(model, "trunk.0", x).detach()
    h = weight_jacobians(model, "trunk.0", x).detach()
    w = model.trunk[0].weight.detach()
    for i, j in [(0, 0), (3, 0), (11, 0)]:
        deltas = result["trunk.0"].bias_shift[i, j] + torch.linspace(-1, 1, 201,
                                                                    dtype=torch.float64) * 0.05
        errors = torch.stack([((d * g[:, :, i] - w[i, j] * h[:, :, i, j]) ** 2).sum(1).mean()
                              for d in deltas])
        assert int(errors.argmin()) == 100
        assert errors[100].item() == pytest.approx(result["trunk.0"].score[i, j].item(), rel=1e-9)


@pytest.mark.parametrize("method", ["ecp", "ecp-nocomp", "magnitude-comp", "gradient", "wanda",
                                    "sparsegpt", "ecp-refit", "sparsegpt-refit", "nonlinear"])
def test_every_method_prunes_exactly_k_with_positions(method):
    model, x = build("token-mlp")
    data = torch.utils.data.TensorDataset(x, torch.randint(0, 3, (len(x),)))
    report = ecprune.prune(model, data, 0.6, method, **(
        {"nonlinear_samples": 10} if method == "nonlinear" else {}))
    removed = sum(int((m.weight_mask == 0).sum()) for _, m in _linears(model))
    assert removed == round(0.6 * report.total) == report.total - report.kept
    assert torch.isfinite(model(x)).all()


def test_steps_and_budget_and_measure_with_positions():
    dense, x = build("deeponet")
    model = copy.deepcopy(dense)
    report = ecprune.prune(model, x, 0.5, "ecp", steps=2)
    assert report.steps == 2
    budget = copy.deepcopy(dense)
    chosen = ecprune.prune_to_budget(budget, x, 0.01)
    assert chosen.relative_predicted_error <= 0.01
    assert ecprune.output_error(dense, model, x).relative > 0


def _all_rows(model: nn.Module, name: str, x: torch.Tensor):
    """Every row of every call of layer ``name`` on ``x``: inputs and outputs (no ecprune)."""
    seen = []
    handle = model.get_submodule(name).register_forward_hook(
        lambda module, args, out: seen.append((args[0].detach(), out.detach())))
    with torch.no_grad():
        model(x)
    handle.remove()
    return (torch.cat([a.reshape(-1, a.shape[-1]) for a, _ in seen]),
            torch.cat([u.reshape(-1, u.shape[-1]) for _, u in seen]))


@pytest.mark.parametrize("kind", ["token-mlp", "twice"])
def test_nonlinear_is_the_real_output_change_of_each_removal(kind):
    model, x = build(kind, n=15)
    result = ecprune.importance(model, x, "nonlinear", nonlinear_samples=len(x))
    dense = model(x).detach()
    for name in result:
        a, _ = _all_rows(model, name, x)
        mean = a.mean(0)
        n_out, n_in = result[name].score.shape
        for i, j in [(0, 0), (1 % n_out, 2 % n_in), (2 % n_out, 1 % n_in)]:
            removed = copy.deepcopy(model)
            layer = removed.get_submodule(name)
            with torch.no_grad():
                layer.bias[i] += layer.weight[i, j] * mean[j]
                layer.weight[i, j] = 0
            expected = (removed(x) - dense).square().sum(1).mean()
            assert result[name].score[i, j].item() == pytest.approx(expected.item(), rel=1e-9)


def test_refit_with_tokens_equals_lstsq_on_the_materialised_rows():
    dense, x = build("mixer", n=40)
    pruned = copy.deepcopy(dense)
    ecprune.prune(pruned, x, 0.6, method="ecp-refit", damping=0.0, chunk_size=9)
    checked = 0
    for name, layer in _linears(pruned):
        inputs, _ = _all_rows(pruned, name, x)  # upstream layers are final when it is refit
        _, targets = _all_rows(dense, name, x)
        design = torch.cat([inputs, torch.ones(len(inputs), 1, dtype=inputs.dtype)], 1)
        for i, keep in enumerate(layer.weight_mask.bool()):
            support = torch.cat([keep, torch.tensor([True])])
            a = design[:, support]
            expected = torch.linalg.lstsq(a, targets[:, i, None], driver="gelsd").solution[:, 0]
            found = torch.cat([layer.weight[i, keep], layer.bias[i, None]])
            torch.testing.assert_close(a @ found, a @ expected, rtol=1e-9, atol=1e-10)
            checked += 1
    assert checked == sum(m.out_features for _, m in _linears(pruned))


def test_a_sensitivity_weighted_refit_with_tokens_is_a_clear_error():
    model, x = build("token-mlp")
    with pytest.raises(ValueError, match=r"refit_weighting='sensitivity' .* Linear layer 'inp' "
                                         r"has several rows per sample.*Use refit_weighting='plain'"):
        ecprune.prune(model, x, 0.5, "ecp-refit", refit_weighting="sensitivity")
    assert not torch.nn.utils.prune.is_pruned(model)


def test_compact_and_to_sparse_take_token_inputs():
    """A per-token Sequential pruned with positions: the compacted and the CSR models give the
    pruned model's outputs on (B, T, F) inputs."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh(),
                          nn.Linear(6, 3)).double()
    x = torch.randn(30, 5, 4, dtype=torch.float64)
    ecprune.prune(model, x, 0.7, "ecp")
    ecprune.bake_masks(model)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(ecprune.compact(model)(x), expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ecprune.to_sparse(model)(x), expected, rtol=1e-12, atol=1e-12)


def test_the_per_sample_engines_agree():
    """Batched reverse passes (rows in sample blocks) and torch.func.vmap over samples give the
    same cotangents and inputs on a token model."""
    from ecprune.engine.positions import BlockJacobians, PerSampleJacobians, sample_blocks
    from ecprune.engine.tape import LayerTape, forward

    model, x = build("transformer", n=6)
    layers = dict(_linears(model))
    blocks = sample_blocks(model, layers, x, None)
    assert blocks is not None and blocks["qkv"] == [4]
    directions = torch.randn(6, 3, 2, dtype=torch.float64)
    shifts = {name: torch.randn(layer.in_features, dtype=torch.float64)
              for name, layer in layers.items()}
    with LayerTape(layers, differentiable=True) as tape:
        _, output = forward(model, x, None)
        (by_blocks,) = list(BlockJacobians(layers, blocks).tiles(x, output, tape, directions,
                                                                 shifts))
        (by_vmap,) = list(PerSampleJacobians(model, layers, x, None).tiles(
            x, output, tape, directions, shifts))
    for name in layers:
        assert len(by_blocks[name].cotangents) == len(by_vmap[name].cotangents) == 3
        for got, want in zip(by_blocks[name].cotangents, by_vmap[name].cotangents, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
        # batched and single-sample products round apart
        torch.testing.assert_close(by_blocks[name].inputs, by_vmap[name].inputs, rtol=1e-12,
                                   atol=1e-14)


def test_token_major_rows_and_shared_rows_are_not_taken_for_sample_blocks():
    model, x = build("deeponet")
    assert sample_blocks_of(model, x) is None

    class TokenMajor(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.out = nn.Linear(2, 3), nn.Linear(3, 1)

        def forward(self, x):
            h = torch.tanh(self.inp(x.reshape(-1, 4, 2).transpose(0, 1)))  # (T, B, 3)
            return self.out(h).sum(0)

    torch.manual_seed(0)
    model = TokenMajor().double()
    x = torch.randn(12, 8, dtype=torch.float64)
    assert sample_blocks_of(model, x) is None
    importance, shift = ecp_oracle(model, "inp", x)
    result = ecprune.importance(model, x, "ecp", sensitivity="exact")
    torch.testing.assert_close(result["inp"].score, importance, rtol=1e-10, atol=1e-15)
    torch.testing.assert_close(result["inp"].bias_shift, shift, rtol=1e-10, atol=1e-15)


def sample_blocks_of(model, x):
    from ecprune.engine.positions import sample_blocks

    return sample_blocks(model, dict(_linears(model)), x, None)
