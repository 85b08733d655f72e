"""The paper's baselines and the ablations against definitional oracles."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ecprune
from conftest import SkipNet, layer_inputs, mlp
from ecprune.methods.nonlinear import _perturbed_outputs


def brute_force(model, x, name, i, j):
    """Remove W_ij for real, add W_ij E[a_j] to b_i, return E||y - y_pruned||^2."""
    a = layer_inputs(model, name, x)
    dense = model(x).detach()
    clone = copy.deepcopy(model)
    target = clone.get_submodule(name)
    with torch.no_grad():
        target.bias[i] += target.weight[i, j] * a[:, j].mean()
        target.weight[i, j] = 0
    return (clone(x) - dense).reshape(len(x), -1).square().sum(1).mean()


@pytest.mark.parametrize("model_factory", [lambda: mlp([3, 4, 3, 2], nn.PReLU), lambda: SkipNet().double()])
def test_nonlinear_equals_removing_each_weight_for_real(model_factory):
    model = model_factory()
    x = torch.randn(20, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    result = ecprune.importance(model, x, "nonlinear", nonlinear_samples=20)
    for name, layer_result in result.items():
        weight = model.get_submodule(name).weight.detach()
        for i in range(weight.shape[0]):
            for j in range(weight.shape[1]):
                torch.testing.assert_close(layer_result.score[i, j], brute_force(model, x, name, i, j),
                                           rtol=1e-9, atol=1e-15)
        inputs_mean = layer_inputs(model, name, x).mean(0)
        torch.testing.assert_close(layer_result.bias_shift, weight * inputs_mean, rtol=1e-12, atol=0)


def test_nonlinear_equals_ecp_on_the_last_layer(tiny):
    """With nothing nonlinear downstream, the exact error of the mean shift is W^2 Var(a) = I."""
    model, x = tiny
    nonlinear = ecprune.importance(model, x, "nonlinear", nonlinear_samples=len(x))
    ecp = ecprune.importance(model, x, "ecp")
    torch.testing.assert_close(nonlinear["4"].score, ecp["4"].score, rtol=1e-9, atol=1e-15)


def test_nonlinear_subsample_is_seeded_and_bounded(tiny):
    model, x = tiny
    a = ecprune.importance(model, x, "nonlinear", nonlinear_samples=10, seed=3)
    b = ecprune.importance(model, x, "nonlinear", nonlinear_samples=10, seed=3)
    c = ecprune.importance(model, x, "nonlinear", nonlinear_samples=10, seed=4)
    assert torch.equal(a["0"].score, b["0"].score)
    assert not torch.equal(a["0"].score, c["0"].score)


def test_nonlinear_vmap_and_tiled_fallback_agree(tiny):
    model, x = tiny
    deltas = torch.randn(5, len(x), 3, dtype=torch.float64)
    with torch.no_grad():
        batched = _perturbed_outputs(model, model[2], x, deltas, None)
        for k in range(5):
            handle = model[2].register_forward_hook(lambda m, args, out, d=deltas[k]: out + d)
            torch.testing.assert_close(batched[k], model(x), rtol=1e-12, atol=0)
            handle.remove()


class InPlaceSkip(nn.Module):
    """An in-place add into an unbatched tensor: vmap refuses it, the fallback must not."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = torch.tanh(x @ torch.ones(3, 4, dtype=x.dtype))
        h += self.a(x)
        return self.b(torch.tanh(h))


def test_nonlinear_falls_back_when_vmap_cannot_run():
    model = InPlaceSkip().double()
    x = torch.randn(15, 3, dtype=torch.float64)
    result = ecprune.importance(model, x, "nonlinear", nonlinear_samples=15)
    torch.testing.assert_close(result["a"].score[1, 2], brute_force(model, x, "a", 1, 2),
                               rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("loss,targets", [
    ("cross_entropy", torch.randint(0, 2, (40,), generator=torch.Generator().manual_seed(0))),
    ("mse", torch.randn(40, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))),
])
def test_gradient_score_is_weight_times_loss_gradient(tiny, loss, targets):
    model, x = tiny
    data = torch.utils.data.TensorDataset(x, targets)
    result = ecprune.importance(model, data, "gradient", loss=loss, chunk_size=7)
    model.zero_grad()
    reference = F.cross_entropy if loss == "cross_entropy" else F.mse_loss
    reference(model(x), targets).backward()
    for name in result:
        layer = model.get_submodule(name)
        expected = (layer.weight * layer.weight.grad).abs().detach()
        torch.testing.assert_close(result[name].score, expected, rtol=1e-9, atol=1e-15)
        assert result[name].bias_shift is None


def test_gradient_accepts_a_callable_loss_and_infers_named_ones(tiny):
    model, x = tiny
    targets = torch.randint(0, 2, (40,))
    data = torch.utils.data.TensorDataset(x, targets)
    inferred = ecprune.importance(model, data, "gradient")
    custom = ecprune.importance(model, data, "gradient",
                                loss=lambda out, t: F.cross_entropy(out, t))
    for name in inferred:
        torch.testing.assert_close(inferred[name].score, custom[name].score, rtol=1e-12, atol=0)


def test_magnitude_comp_uses_magnitude_and_mean_signal_shift(tiny):
    model, x = tiny
    result = ecprune.importance(model, x, "magnitude-comp")
    a1 = torch.tanh(model[0](x)).detach()
    torch.testing.assert_close(result["2"].score, model[2].weight.detach().abs(), rtol=0, atol=0)
    torch.testing.assert_close(result["2"].bias_shift, model[2].weight.detach() * a1.mean(0),
                               rtol=1e-12, atol=0)


def test_random_is_seeded(tiny):
    model, x = tiny
    masks = []
    for seed in (0, 0, 1):
        clone = copy.deepcopy(model)
        ecprune.prune(clone, x, 0.5, method="random", seed=seed)
        masks.append(torch.cat([m.weight_mask.reshape(-1) for m in clone if isinstance(m, nn.Linear)]))
    assert torch.equal(masks[0], masks[1]) and not torch.equal(masks[0], masks[2])


def test_ecp_ranking_tracks_nonlinear_ranking_on_a_smooth_net():
    """ECP is the linearisation of the exact error: on a mildly nonlinear tanh network the
    two rankings agree closely (Spearman > 0.9)."""
    model = mlp([4, 8, 8, 2], nn.Tanh, seed=3)
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.mul_(0.5)
    x = torch.randn(200, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    ecp = ecprune.importance(model, x)
    exact = ecprune.importance(model, x, "nonlinear", nonlinear_samples=200)
    a = torch.cat([ecp[n].score.reshape(-1) for n in ecp])
    b = torch.cat([exact[n].score.reshape(-1) for n in ecp])
    ranks = lambda t: t.argsort().argsort().double()  # noqa: E731
    assert torch.corrcoef(torch.stack([ranks(a), ranks(b)]))[0, 1] > 0.9


def test_gradient_mse_with_targets_of_the_wrong_size_names_both_shapes(tiny):
    model, x = tiny
    data = torch.utils.data.TensorDataset(x, torch.randn(len(x), 3, dtype=x.dtype))
    with pytest.raises(ValueError, match=r"The 'mse' loss compares float targets .* shape "
                                         r"\(\d+, 3\) for an output of shape \(\d+, 2\)"):
        ecprune.importance(model, data, "gradient")
