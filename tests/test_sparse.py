"""Sparse (CSR) inference gives the dense model's outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ecprune
from conftest import mlp

# A CSR product sums the same terms in another order: rounding only.
TOLERANCE = {torch.float64: {"rtol": 1e-12, "atol": 1e-12},
             torch.float32: {"rtol": 1e-5, "atol": 1e-5}}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [1, 256])
def test_sparse_model_matches_the_pruned_dense_model(dtype, batch):
    model = mlp([20, 32, 32, 5], lambda: nn.PReLU(32), seed=0, dtype=dtype)
    x = torch.randn(batch, 20, dtype=dtype, generator=torch.Generator().manual_seed(1))
    ecprune.prune(model, torch.randn(300, 20, dtype=dtype), 0.8)
    sparse = ecprune.to_sparse(model)
    assert [type(m).__name__ for m in sparse][::2] == ["SparseLinear"] * 3
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), model(x), **TOLERANCE[dtype])
    stored = sum(m.nnz for m in sparse if isinstance(m, ecprune.SparseLinear))
    assert stored == sum(int((m.weight != 0).sum()) for m in model if isinstance(m, nn.Linear))


def test_leading_dimensions_and_bias_free_layers():
    linear = nn.Linear(6, 4, bias=False).double()
    with torch.no_grad():
        linear.weight[linear.weight.abs() < 0.2] = 0
    sparse = ecprune.SparseLinear.from_linear(linear)
    x = torch.randn(2, 3, 6, dtype=torch.float64)
    torch.testing.assert_close(sparse(x), linear(x).detach(), **TOLERANCE[torch.float64])
    assert sparse(x).shape == (2, 3, 4)


def test_min_sparsity_leaves_denser_layers_dense():
    model = mlp([4, 8, 2], nn.ReLU, seed=2)
    with torch.no_grad():
        model[0].weight[:, :3] = 0  # 75% zeros; the last layer has none
    sparse = ecprune.to_sparse(model, min_sparsity=0.5)
    assert isinstance(sparse[0], ecprune.SparseLinear) and isinstance(sparse[2], nn.Linear)


def test_empty_layers_left_by_compaction_convert():
    model = mlp([3, 4, 2], nn.Tanh, seed=4)
    with torch.no_grad():
        model[0].weight.zero_()
    small = ecprune.compact(model)  # (0, 3) and (2, 0) weights
    x = torch.randn(5, 3, dtype=torch.float64)
    torch.testing.assert_close(ecprune.to_sparse(small)(x), model(x).detach(),
                               **TOLERANCE[torch.float64])


def test_the_input_model_is_not_modified_and_a_single_linear_converts():
    linear = nn.Linear(3, 2)
    sparse = ecprune.to_sparse(linear)
    assert isinstance(sparse, ecprune.SparseLinear) and isinstance(linear.weight, nn.Parameter)


def test_wrong_widths_and_bad_options_are_reported():
    sparse = ecprune.SparseLinear.from_linear(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="expects 3 input features; got an input of shape"):
        sparse(torch.randn(4, 5))
    with pytest.raises(ValueError, match=r"'min_sparsity' parameter of to_sparse must be a float "
                                         r"in the range \[0.0, 1.0\]. Got 2"):
        ecprune.to_sparse(nn.Linear(3, 2), min_sparsity=2)


def test_bake_masks_makes_pruned_weights_plain_parameters_in_place():
    model = mlp([4, 6, 2], nn.ReLU, seed=3)
    ecprune.prune(model, torch.randn(50, 4, dtype=torch.float64), 0.5)
    masked = [(m.weight_orig * m.weight_mask).detach() for m in model[::2]]
    assert ecprune.bake_masks(model) is model
    for layer, expected in zip(model[::2], masked, strict=True):
        assert isinstance(layer.weight, nn.Parameter) and not hasattr(layer, "weight_mask")
        assert torch.equal(layer.weight.detach(), expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_without_a_csr_product_is_refused_at_export(dtype):
    """CPU's CSR product (MKL) has no float16 or bfloat16 kernel: refused when converting,
    naming the layer, instead of a NotImplementedError at the first forward."""
    model = mlp([4, 6, 2], nn.ReLU, seed=0, dtype=dtype)
    with pytest.raises(ValueError, match=rf"to_sparse: layer '0': SparseLinear cannot hold "
                                         rf"{dtype} weights on cpu: PyTorch has no sparse CSR "
                                         r"product for them \(.*\)\. Convert the model first"):
        ecprune.to_sparse(model)
    sparse = ecprune.to_sparse(model.float())
    x = torch.randn(3, 4)
    torch.testing.assert_close(sparse(x), model.float()(x), **TOLERANCE[torch.float32])
