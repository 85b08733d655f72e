"""Every accepted data form gives the same result; every bad input gets a clear error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ecprune


def reference_scores(model, x):
    return ecprune.importance(model, x, chunk_size=len(x))


@pytest.mark.parametrize("form", ["tensor", "numpy", "dataset", "dataset-xy", "loader",
                                  "loader-xy", "generator", "list", "list-tuples"])
def test_every_data_form_gives_the_same_scores(tiny, form):
    model, x = tiny
    y = torch.randint(0, 2, (len(x),))
    data = {
        "tensor": lambda: x,
        "numpy": lambda: x.numpy(),
        "dataset": lambda: TensorDataset(x),
        "dataset-xy": lambda: TensorDataset(x, y),
        "loader": lambda: DataLoader(TensorDataset(x), batch_size=9),
        "loader-xy": lambda: DataLoader(TensorDataset(x, y), batch_size=9),
        "generator": lambda: (x[k : k + 6] for k in range(0, len(x), 6)),
        "list": lambda: list(x.split(11)),
        "list-tuples": lambda: list(zip(x.split(11), y.split(11), strict=True)),
    }[form]()
    result = ecprune.importance(model, data, chunk_size=5)
    expected = reference_scores(model, x)
    for name in expected:
        torch.testing.assert_close(result[name].score, expected[name].score, rtol=1e-10, atol=1e-16)


def test_a_map_style_dataset_is_streamed(tiny):
    model, x = tiny

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return len(x)

        def __getitem__(self, k):
            return x[k]

    result = ecprune.importance(model, Rows(), chunk_size=8)
    torch.testing.assert_close(result["0"].score, reference_scores(model, x)["0"].score,
                               rtol=1e-10, atol=1e-16)


@pytest.mark.parametrize("sparsity,error,match", [
    (1.0, ValueError, r"'sparsity' parameter of prune must be a float in the range \[0.0, 1.0\). Got 1.0"),
    (-0.1, ValueError, r"Got -0.1 instead"),
    (float("nan"), ValueError, r"Got nan instead"),
    ("0.5", TypeError, r"Got '0.5' of type str instead"),
    (True, TypeError, r"Got True of type bool"),
])
def test_bad_sparsity(tiny, sparsity, error, match):
    model, x = tiny
    with pytest.raises(error, match=match):
        ecprune.prune(model, x, sparsity)


def test_unknown_method_lists_the_valid_ones(tiny):
    model, x = tiny
    with pytest.raises(ValueError, match=r"'method' parameter.*'ecp', 'ecp-nocomp', 'nonlinear'.*Got 'ecpp'"):
        ecprune.prune(model, x, 0.5, method="ecpp")


def test_unknown_scope_and_option(tiny):
    model, x = tiny
    with pytest.raises(ValueError, match=r"'scope' parameter of prune must be one of 'global', 'layer', 'row'"):
        ecprune.prune(model, x, 0.5, scope="column")
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['chunksize'\]; valid options"):
        ecprune.importance(model, x, chunksize=3)
    with pytest.raises(ValueError, match=r"'chunk_size' parameter of importance must be an int >= 1. Got 0"):
        ecprune.importance(model, x, chunk_size=0)


@pytest.mark.parametrize("empty", [torch.empty(0, 3, dtype=torch.float64), [], iter([])])
def test_empty_data(tiny, empty):
    model, _ = tiny
    with pytest.raises(ValueError, match="holds no samples"):
        ecprune.prune(model, empty, 0.5)


def test_input_width_that_does_not_fit(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match=r"Linear layer '0' expects 3 input features but the data gives it 5"):
        ecprune.prune(model, torch.randn(10, 5, dtype=torch.float64), 0.5)


def test_width_mismatch_outside_a_linear_is_reported_with_the_batch_shape():
    model = nn.Sequential(nn.LayerNorm(4), nn.Linear(4, 2)).double()
    with pytest.raises(ValueError, match=r"model failed on a data batch of shape \(10, 3\)"):
        ecprune.importance(model, torch.randn(10, 3, dtype=torch.float64))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_data(tiny, bad):
    model, x = tiny
    x = x.clone()
    x[3, 1] = bad
    with pytest.raises(ValueError, match=r"inputs of data batch 0 contain 1 NaN or infinite values"):
        ecprune.prune(model, x, 0.5)


def test_model_without_linear_layers():
    with pytest.raises(ValueError, match=r"has no nn.Linear layers"):
        ecprune.prune(nn.Sequential(nn.Tanh()), torch.randn(4, 3), 0.5)
    with pytest.raises(TypeError, match=r"'model' parameter must be a torch.nn.Module"):
        ecprune.prune(lambda x: x, torch.randn(4, 3), 0.5)


def test_gradient_without_targets(tiny):
    model, x = tiny
    with pytest.raises(ValueError, match=r"'gradient' needs targets.*TensorDataset"):
        ecprune.prune(model, x, 0.5, method="gradient")
    with pytest.raises(ValueError, match=r"'loss' parameter of importance must be one of 'cross_entropy', 'mse'"):
        ecprune.prune(model, TensorDataset(x, x[:, 0]), 0.5, method="gradient", loss="l1")


def test_bad_data_types_and_batches(tiny):
    model, x = tiny
    with pytest.raises(TypeError, match=r"'data' parameter must be a tensor of inputs.*Got str"):
        ecprune.importance(model, "data.csv")
    with pytest.raises(TypeError, match=r"must be a torch.Tensor or numpy.ndarray. Got list"):
        ecprune.importance(model, [[[1.0, 2.0, 3.0]]])
    with pytest.raises(ValueError, match=r"has 40 inputs but 39 targets"):
        ecprune.importance(model, [(x, x[:39, 0])])
    with pytest.raises(ValueError, match=r"length 3 instead"):
        ecprune.importance(model, [(x, x, x)])


def test_bad_layer_selection(tiny):
    model, x = tiny
    with pytest.raises(ValueError, match=r"names 'fc9', which is not an nn.Linear of the model. Expected some of"):
        ecprune.prune(model, x, 0.5, layers=["fc9"])
    with pytest.raises(ValueError, match=r"names a Tanh that is not an nn.Linear"):
        ecprune.prune(model, x, 0.5, layers=[model[1]])


def test_layers_that_do_not_run_are_an_error_and_layers_that_run_twice_are_scored():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.shared, self.unused = nn.Linear(3, 3), nn.Linear(3, 3)

        def forward(self, x):
            return self.shared(torch.tanh(self.shared(x)))

    model = Twice().double()
    x = torch.randn(8, 3, dtype=torch.float64)
    assert ecprune.importance(model, x, layers=["shared"])["shared"].score.shape == (3, 3)
    with pytest.raises(ValueError, match=r"layers \['unused'\] were not called"):
        ecprune.importance(model, x, layers=["unused"])


def test_tuple_output_needs_output_fn(tiny):
    model, x = tiny

    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, inp):
            return self.net(inp), inp

    with pytest.raises(TypeError, match=r"output used for the sensitivities is a tuple.*output_fn="):
        ecprune.importance(Pair(), x)
    result = ecprune.importance(Pair(), x, output_fn=lambda out: out[0])
    torch.testing.assert_close(result["net.0"].score, reference_scores(model, x)["0"].score,
                               rtol=1e-10, atol=1e-16)


def test_integer_inputs_are_cast_to_the_model_dtype(tiny):
    model, _ = tiny
    x = np.arange(30, dtype=np.uint8).reshape(10, 3)
    result = ecprune.importance(model, x)
    assert result["0"].score.dtype == torch.float64


def test_a_layer_the_gradient_cannot_reach_is_refused_and_a_dead_layer_is_not():
    class Detached(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.hidden, self.out = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            h = torch.tanh(self.inp(x))
            return self.out(torch.tanh(self.hidden(h)).detach() + h)

    torch.manual_seed(0)
    model = Detached().double()
    x = torch.randn(20, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"Linear layer 'hidden' changes the model's output, "
                                         r"but the output's gradient does not reach it"):
        ecprune.prune(model, x, 0.5)
    assert not torch.nn.utils.prune.is_pruned(model)
    ecprune.prune(model, x, 0.5, method="magnitude")  # needs no gradient: fine
    dead = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    with torch.no_grad():
        dead[0].bias.fill_(-100.0)  # every hidden unit inactive on the data: zero, not blind
    report = ecprune.prune(dead, x, 0.5, layers=["0"])
    assert report.predicted_error == 0


def test_sparse_data_nan_outputs_and_out_of_range_classes_are_clear_errors(tiny):
    model, x = tiny
    with pytest.raises(TypeError, match=r"must be a dense tensor; got one with layout "
                                        r"torch.sparse_coo. Convert it first"):
        ecprune.importance(model, x.to_sparse())
    exploding = nn.Sequential(nn.Linear(3, 2), nn.Softplus()).double()
    with torch.no_grad():
        exploding[0].weight.fill_(1e300)
    with pytest.raises(ValueError, match=r"output is NaN or infinite on the data"):
        ecprune.importance(exploding, x)
    with pytest.raises(ValueError, match=r"got class targets from 0 to 4, but the model has 2 "
                                         r"outputs; expected classes 0 to 1"):
        ecprune.importance(model, TensorDataset(x, torch.arange(len(x)) % 5), "gradient")
