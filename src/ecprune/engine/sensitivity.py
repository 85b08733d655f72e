"""Per-sample sensitivities ``s_i(x) = ||dy/du_i||^2`` of the pruned layers' pre-activations.

``s`` is a sum of squared vector-Jacobian products ``sum_k (v_k^T dy/du)^2`` over a set of
seeds ``v_k`` per sample:

- ``exact``: the unit vectors ``e_1 .. e_{n_out}``, one reverse pass per output (the chain
  engine needs only ``min(n_out, width)``: see :func:`_shared_seeds`);
- ``hutchinson``: ``p`` Rademacher probes per sample, scaled by ``1/sqrt(p)``. Since
  ``E[v v^T] = I``, the estimate is unbiased, ``E[(v^T g)^2] = ||g||^2``, and its cost is ``p``
  reverse passes whatever ``n_out``. One output: ``v = +-1`` gives ``s`` exactly. ECP's sums use
  ``E[s a]``, ``E[s a^2]`` and ``E[s]`` with the same ``s``, so they are unbiased too.

Two engines compute the same sums:

- :func:`chain_sensitivities`, for an ``nn.Sequential`` of ``nn.Linear`` layers and elementwise
  activations (:func:`find_chain`): the reverse Jacobian recursion ``G <- (G W) * sigma'(u)``
  carrying a whole block of seeds, one GEMM per layer, starting from the sample-independent
  rows of the last weight and never touching the first layer's (often wide) input;
- :func:`sensitivities`, for any other structure (skip connections, ``output_fn``, ...):
  batched VJPs through autograd (``is_grads_batched``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

ESTIMATORS = ("auto", "exact", "hutchinson")
# Probes of the Hutchinson estimator when none are given, and the output size up to which
# "auto" stays exact: see docs/performance.md ("Many outputs") for the measurements behind them.
AUTO_PROBES = 8
AUTO_EXACT_OUTPUTS = 16
# Elements of one block of reverse passes (seeds x chunk x widest layer): bounds its memory.
VJP_ELEMENTS = 2**24
# On CPUs the chain engine works on tiles of samples x seeds x width of at most CHAIN_ELEMENTS
# (cache-sized: measured best in benchmarks/; tiles keep at least MIN_TILE samples), elsewhere
# of VJP_ELEMENTS. It fuses a per-sample scale into a GEMM only while (seeds x weight) stays
# under MIXED_ELEMENTS.
CHAIN_ELEMENTS = 2**19
MIN_TILE = 32
MIXED_ELEMENTS = 2**22
# Up to this many seeds per block, sum_k G_k^2 is accumulated column by column.
SMALL_BLOCK = 16

# Activations whose Jacobian is diagonal (elementwise, per-channel PReLU included); in eval
# mode dropout is the identity.
ELEMENTWISE = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Softsign, nn.Hardtanh,
    nn.Hardsigmoid, nn.Hardswish, nn.LogSigmoid, nn.Tanhshrink, nn.Identity, nn.Dropout,
)


def resolve_probes(estimator: str, probes: int | None, n_out: int) -> int | None:
    """Number of Hutchinson probes for ``n_out`` outputs, or None for exact sensitivities.

    ``"auto"`` is exact while ``n_out <= max(AUTO_EXACT_OUTPUTS, probes)``: up to there exact
    sums cost at most about twice the default estimate, and never more reverse passes than
    the estimate asked for; beyond, ``probes`` (default :data:`AUTO_PROBES`) probes.
    """
    chosen = AUTO_PROBES if probes is None else probes
    if estimator == "exact" or (estimator == "auto" and n_out <= max(AUTO_EXACT_OUTPUTS,
                                                                     chosen)):
        return None
    return chosen


def rademacher(shape: tuple[int, ...], probes: int, generator: torch.Generator,
               *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Random signs ``+-1/sqrt(probes)`` drawn on ``device`` from ``generator``."""
    signs = torch.randint(0, 2, shape, generator=generator, device=device, dtype=torch.int8)
    scale = 1 / math.sqrt(probes)
    return signs.to(dtype).mul_(2 * scale).sub_(scale)


def _blocks(total: int, block: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, block):
        yield start, min(total, start + block)


def _block_size(seeds: int, batch: int, width: int) -> int:
    return max(1, min(seeds, VJP_ELEMENTS // max(1, batch * width)))


def seed_products(output: torch.Tensor, pre_activations: list[torch.Tensor], *,
                  probes: int | None = None, generator: torch.Generator | None = None,
                  directions: torch.Tensor | None = None) -> Iterator[tuple]:
    """Per block of seeds ``v_k``, ``v_k^T dy/du`` (k, B, n) for every tensor of
    ``pre_activations`` (zeros where it does not reach ``output``), by batched reverse passes.

    Seeds: the unit vectors of the outputs (``probes=None``), ``probes`` Rademacher vectors
    scaled by ``1/sqrt(probes)`` per sample, so that summed squares estimate ``||dy/du||^2``,
    or the caller's per-sample ``directions`` (B, seeds, n_out), e.g. the rows of a factor of
    a loss's Hessian.
    """
    batch, n_out = output.shape
    seeds = n_out if probes is None else probes
    seeds = seeds if directions is None else directions.shape[1]
    width = sum(u.shape[1] for u in pre_activations)
    for start, stop in _blocks(seeds, _block_size(seeds, batch, width)):
        if directions is not None:
            grad_outputs = directions[:, start:stop].transpose(0, 1)
        elif probes is None:
            grad_outputs = output.new_zeros(stop - start, batch, n_out)
            grad_outputs[torch.arange(stop - start), :, torch.arange(start, stop)] = 1
        else:
            grad_outputs = rademacher((stop - start, batch, n_out), probes, generator,
                                      dtype=output.dtype, device=output.device)
        grads = torch.autograd.grad(output, pre_activations, grad_outputs=grad_outputs,
                                    is_grads_batched=True, retain_graph=stop < seeds,
                                    allow_unused=True)
        yield [u.new_zeros(stop - start, *u.shape) if g is None else g
               for g, u in zip(grads, pre_activations, strict=True)]


def sensitivities(output: torch.Tensor, pre_activations: list[torch.Tensor], *,
                  probes: int | None = None, generator: torch.Generator | None = None,
                  directions: torch.Tensor | None = None) -> list[torch.Tensor]:
    """``s(x)`` (B, n) for every tensor in ``pre_activations`` by autograd (any structure).

    ``output`` (B, n_out) must depend on each pre-activation through the autograd graph.
    ``probes=None``: exact, one batched reverse pass per block of outputs; else the Hutchinson
    estimate with ``probes`` Rademacher probes per sample drawn from ``generator``;
    ``directions`` (B, m, n_out): ``sum_m ||d(v_m . y)/du||^2`` over the caller's seeds.
    """
    result = [torch.zeros_like(u, requires_grad=False) for u in pre_activations]
    for grads in seed_products(output, pre_activations, probes=probes, generator=generator,
                               directions=directions):
        for total, grad in zip(result, grads, strict=True):
            total += grad.square().sum(0)
    return result


@dataclass(frozen=True)
class Chain:
    """A model that is ``prefix`` (anything) followed by ``body``: Linear layers and
    elementwise activations only, holding every pruned layer."""

    prefix: tuple[nn.Module, ...]
    body: tuple[nn.Module, ...]

    def width(self, consumed: int = 0) -> int:
        """The widest Linear output in the body but its last ``consumed`` modules."""
        body = self.body[: len(self.body) - consumed]
        return max((m.out_features for m in body if type(m) is nn.Linear), default=1)


def _flatten(module: nn.Module) -> list[nn.Module] | None:
    """The leaf modules a plain ``nn.Sequential`` runs, in order; None for anything else."""
    if type(module) is not nn.Sequential:
        return [module]
    if module._forward_hooks or module._forward_pre_hooks:
        return None
    flat = []
    for child in module:
        inner = _flatten(child)
        if inner is None:
            return None
        flat.extend(inner)
    return flat


def find_chain(model: nn.Module, layers: dict[str, nn.Linear]) -> Chain | None:
    """The chain structure of ``model`` if it has one (see :class:`Chain`), else None."""
    if type(model) is not nn.Sequential:
        return None
    modules = _flatten(model)
    wanted = {id(layer) for layer in layers.values()}
    first = next((k for k, m in enumerate(modules or []) if id(m) in wanted), None)
    if first is None:
        return None
    body = modules[first:]
    if not wanted <= {id(m) for m in body}:
        return None
    if not all(type(m) is nn.Linear or type(m) in ELEMENTWISE for m in body):
        return None
    return Chain(prefix=tuple(modules[:first]), body=tuple(body))


def _value_and_slope(activation: nn.Module, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``sigma(u)`` and the diagonal of its Jacobian ``sigma'(u)`` (one elementwise VJP)."""
    with torch.enable_grad():
        # Differentiate with respect to a view, not a leaf: module-level backward hooks (e.g.
        # torch.utils.flop_counter) cannot take gradients with respect to leaves.
        point = u.detach().requires_grad_().view_as(u)
        value = activation(point)
        (slope,) = torch.autograd.grad(value, point, torch.ones_like(value))
    return value.detach(), slope


class ChainRun:
    """Runs a chain's forward like the model does (Linear layers are called as modules, so
    their hooks run) and keeps ``sigma'`` at each activation of the body (None at Linear
    layers) from the last call in ``slopes``."""

    def __init__(self, chain: Chain):
        self.chain = chain
        self.slopes: list[torch.Tensor | None] = []

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        h = inputs
        for module in self.chain.prefix:
            h = module(h)
        self.slopes = []
        for module in self.chain.body:
            if type(module) is nn.Linear:
                h = module(h)
                self.slopes.append(None)
            else:
                h, slope = _value_and_slope(module, h)
                self.slopes.append(slope)
        return h


@dataclass(frozen=True)
class _Jacobian:
    """``dy/dh`` for one block of K seeds at the current point ``h`` (width d) of the chain:
    ``base`` (B, K, d) per sample or (K, d) shared by all samples, times an optional
    per-sample column ``scale`` (B, d). Activations only update the scale; it is applied when
    a Linear layer needs the product."""

    base: torch.Tensor
    scale: torch.Tensor | None = None

    def through_activation(self, slope: torch.Tensor) -> _Jacobian:
        """``G diag(sigma'(u))``."""
        return _Jacobian(self.base, slope if self.scale is None else self.scale * slope)

    def squared_norms(self) -> torch.Tensor:
        """``sum_k G_k^2``: (B, d), or (d,) when shared."""
        if self.base.ndim == 2:
            norms = self.base.square().sum(0)
        elif self.base.shape[1] <= SMALL_BLOCK:  # K strided passes beat a middle-axis sum
            norms = torch.zeros_like(self.base[:, 0])
            for column in self.base.unbind(1):
                norms.addcmul_(column, column)
        else:
            norms = self.base.square().sum(1)
        return norms if self.scale is None else self.scale.square() * norms

    def through_linear(self, layer: nn.Linear, memo: dict) -> _Jacobian:
        """``G W``. A shared base with a scale takes one GEMM of the scale with the
        Khatri-Rao product ``M[i, (k, j)] = base[k, i] W[i, j]`` when that is small, instead of
        first materialising ``base * scale`` (B, K, d). ``memo`` keeps ``M`` per layer for the
        next tile of samples (same seeds)."""
        weight = layer.weight.detach()
        if self.scale is None:
            return _Jacobian(self.base @ weight)
        if self.base.ndim == 3 or len(self.base) * weight.numel() > MIXED_ELEMENTS:
            return _Jacobian(self.base * self.scale[:, None, :]).through_linear(layer, memo)
        k, d = self.base.shape
        if layer not in memo:
            memo[layer] = (self.base.T[:, :, None] * weight[:, None, :]).reshape(d, -1)
        return _Jacobian((self.scale @ memo[layer]).view(len(self.scale), k, -1))


def _shared_seeds(chain: Chain, wanted: dict[int, int], totals: list[torch.Tensor],
                  output: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Exact seeds carried back through the sample-independent end of the chain (Linear
    layers up to the last activation), adding their sensitivities to ``totals``.

    Returns the seeds ``G`` (K, d) there and the number of modules consumed. ``s`` depends on
    ``G`` only through ``G^T G``, so when K > d the seeds are compressed to the triangular
    factor ``R`` of ``G = QR``: an exact answer in ``min(n_out, d)`` reverse passes.
    """
    g = torch.eye(output.shape[1], dtype=output.dtype, device=output.device)
    consumed = 0
    for module in reversed(chain.body):
        if type(module) is not nn.Linear:
            break
        if id(module) in wanted:
            totals[wanted[id(module)]] += g.square().sum(0)
        g = g @ module.weight.detach()
        consumed += 1
    if len(g) > g.shape[1]:
        g = torch.linalg.qr(g, mode="r").R
    return g, consumed


def _reverse(chain: Chain, slopes: list, wanted: dict[int, int], jacobian: _Jacobian,
             totals: list[torch.Tensor], *, consumed: int, memo: dict) -> None:
    """Add ``sum_k (v_k^T dy/du)^2`` to ``totals[wanted[id(layer)]]`` for one block of seeds,
    ``jacobian`` holding them after the last ``consumed`` modules; ``slopes`` and ``totals``
    are one tile of samples, ``memo`` is kept across the tiles of one block of seeds."""
    steps = list(zip(chain.body, slopes, strict=True))[: len(chain.body) - consumed]
    left = sum(id(module) in wanted for module, _ in steps)
    for module, slope in reversed(steps):
        if left == 0:  # nothing upstream is pruned: stop before the first layer's wide input
            return
        if slope is not None:
            jacobian = jacobian.through_activation(slope)
            continue
        if id(module) in wanted:
            totals[wanted[id(module)]] += jacobian.squared_norms()
            left -= 1
            if left == 0:
                return
        jacobian = jacobian.through_linear(module, memo)


def chain_sensitivities(run: ChainRun, pre_activations: list[nn.Linear], output: torch.Tensor,
                        *, probes: int | None = None,
                        generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """``s(x)`` (B, n) at the output of each layer in ``pre_activations`` by the reverse
    Jacobian recursion, after ``run`` computed ``output``; options as in :func:`sensitivities`.

    Works on blocks of seeds x tiles of samples of at most ``CHAIN_ELEMENTS`` per Jacobian.
    """
    batch, n_out = output.shape
    wanted = {id(layer): k for k, layer in enumerate(pre_activations)}
    totals = [output.new_zeros(batch, layer.out_features) for layer in pre_activations]
    if probes is None:
        shared, consumed = _shared_seeds(run.chain, wanted, totals, output)
    else:
        shared, consumed = None, 0
    seeds = len(shared) if probes is None else probes
    width = run.chain.width(consumed)  # of the per-sample Jacobians
    budget = CHAIN_ELEMENTS if output.device.type == "cpu" else VJP_ELEMENTS
    block = max(1, min(seeds, budget // (min(batch, MIN_TILE) * width)))
    tile = max(MIN_TILE, budget // (block * width))
    for start, stop in _blocks(seeds, block):
        memo: dict = {}
        for first, last in _blocks(batch, tile):
            if probes is None:
                jacobian = _Jacobian(shared[start:stop])
            else:
                jacobian = _Jacobian(rademacher((last - first, stop - start, n_out), probes,
                                                generator, dtype=output.dtype,
                                                device=output.device))
            slopes = [None if slope is None else slope[first:last] for slope in run.slopes]
            _reverse(run.chain, slopes, wanted, jacobian, [t[first:last] for t in totals],
                     consumed=consumed, memo=memo)
    return totals
