"""Output sensitivities per data sample for layers with several rows per sample.

A layer may see ``(batch, tokens, features)``, run several times per forward (a recurrent cell,
a neural-ODE vector field, a block applied twice) or act on rows shared by every sample (a
DeepONet's trunk on its query points). For one sample ``x`` its pre-activations form rows
``u_p``; removing ``W_ij`` and shifting ``b_i`` by ``delta`` changes the sample's output, to
first order, by ``delta G_i - W_ij H_ij`` with ``G_i = sum_p g_ip``, ``H_ij = sum_p g_ip a_jp``
and ``g_ip = dy/du_ip``. ECP's sums become ``S = E|G|^2``, ``P = E[G . H]``, ``Q = E|H|^2``
(OBS with the Gauss-Newton matrix restricted to ``(W_ij, b_i)``); with one row per sample they
are the paper's ``E[s]``, ``E[s a]``, ``E[s a^2]``.

For directions ``z`` (the output basis, or Rademacher probes drawn per sample),
``z . G_i = sum_p c_ip`` and ``z . H_ij = sum_p c_ip a_jp`` with ``c = d(z . y)/du``: one
vector-Jacobian product per direction and one small GEMM per sample. The samples are kept
apart by ``torch.func.vmap`` over the chunk (PyTorch's per-sample-gradient recipe), which also
separates rows that every sample shares. :func:`layouts` decides which layers need this: a
layer called once per forward on a 2-D input whose rows are the batch takes the one-row fast
path of :mod:`ecprune.engine.statistics`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import vjp, vmap

from .tape import LayerTape, forward

# Elements of the cotangents (samples x directions x rows x width) computed at once.
JACOBIAN_ELEMENTS = 2**24
# Elements of the per-sample products H (samples x n_out x n_in) formed at once: small enough
# for the product to be squared and summed while it is still in the cache.
PRODUCT_ELEMENTS = 2**19
# Elements (rows x width) of the largest layer activation in one pass of the block engine:
# chunks are split into passes of this size, whose activations stay in a core's cache (1 MiB in
# float32; on a token MLP 128-256-128 passes of 1,024 rows took 78-81 % of the time of passes of
# 4,096, docs/performance.md).
BLOCK_ELEMENTS = 2**18
POSITIONS = ("auto", "exact", "independent")
# The dtype of the per-sample products H (docs/performance.md, "Several rows per sample"):
# the model's, or bfloat16 (several times faster GEMMs where the CPU has bf16 instructions; the
# products and sums are then taken in the model's dtype).
PRODUCTS = ("model", "bfloat16")


def layouts(model: nn.Module, layers: dict[str, nn.Linear], sample: torch.Tensor,
            output_fn: Callable | None) -> dict[str, bool]:
    """For each layer, whether it has one row per sample: on two samples of the chunk
    ``sample`` (or its one sample twice) and on one, it is called once, on a 2-D input with as
    many rows as samples."""
    shapes = {}
    for inputs in (sample[:2] if len(sample) > 1 else torch.cat([sample, sample]), sample[:1]):
        with torch.no_grad(), LayerTape(layers, differentiable=False) as tape:
            forward(model, inputs, output_fn)
        shapes[len(inputs)] = {name: [tuple(a.shape) for a, _ in tape.calls.get(name, [])]
                               for name in layers}
    return {name: all(shapes[n][name] == [(n, layers[name].in_features)] for n in shapes)
            for name in layers}


def sample_blocks(model: nn.Module, layers: dict[str, nn.Linear], chunk: torch.Tensor,
                  output_fn: Callable | None) -> dict[str, list[int]] | None:
    """Rows per sample of every call of every layer when each sample's rows are a contiguous
    block of the batch's rows, in sample order, and samples do not mix (checked on values:
    two different samples run together give the rows and outputs they give alone); None when
    some layer's rows are shared by the samples or laid out otherwise (e.g. token-major)."""
    first = chunk[:1]
    second = next((s[None] for s in chunk[1:] if not torch.equal(s, chunk[0])), first)
    runs = [_record(model, layers, inputs, output_fn)
            for inputs in (first, second, torch.cat([first, second]))]
    (calls_1, y_1), (calls_2, y_2), (calls_pair, y_pair) = runs
    if not _close(y_pair, torch.cat([y_1, y_2])):
        return None
    blocks = {}
    for name in layers:
        if not len(calls_pair[name]) == len(calls_1[name]) == len(calls_2[name]) > 0:
            return None
        blocks[name] = []
        for u_1, u_2, u_pair in zip(calls_1[name], calls_2[name], calls_pair[name], strict=True):
            if not (u_pair.shape[0] == 2 * u_1.shape[0] and u_1.shape == u_2.shape
                    and _close(u_pair, torch.cat([u_1, u_2]))):
                return None
            blocks[name].append(len(u_1))
    return blocks


def _record(model, layers, inputs, output_fn):
    """Each layer's call outputs as rows (rows, n_out), and the model's output."""
    with torch.no_grad(), LayerTape(layers, differentiable=False) as tape:
        _, output = forward(model, inputs, output_fn)
    return ({name: [u.reshape(-1, u.shape[-1]) for _, u in tape.calls.get(name, [])]
             for name in layers}, output)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to the rounding of batched against single-sample products."""
    scale = max(a.abs().max().item(), b.abs().max().item(), 1.0) if a.numel() else 1.0
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5 * scale)


@dataclass
class LayerRows:
    """One layer's per-sample cotangents ``c``, one (B, rows, n_out) tensor per direction, and
    inputs ``a``
    (B, rows, n_in) about the layer's input shift, the rows of every call concatenated in call
    order."""

    cotangents: tuple[torch.Tensor, ...]
    inputs: torch.Tensor


class PerSampleJacobians:
    """Per-sample vector-Jacobian products of the model's output with respect to every row of
    the chosen layers' pre-activations (``c = d(z . y)/du``), by ``torch.func``.

    Built from one sample, whose forward fixes each layer's calls and their shapes.
    """

    needs_graph = False  # every sample runs again, under torch.func

    def __init__(self, model: nn.Module, layers: dict[str, nn.Linear], sample: torch.Tensor,
                 output_fn: Callable | None):
        self.model, self.layers, self.output_fn = model, layers, output_fn
        with torch.no_grad(), LayerTape(layers, differentiable=False) as tape:
            _, output = forward(model, sample[:1], output_fn)
        self.n_out = output.shape[1]
        # Per call, the shape of its pre-activation for one sample (a batch of one).
        self.shapes = {name: [tuple(u.shape) for _, u in tape.calls.get(name, [])]
                       for name in layers}  # (a layer that never runs fails in the stream)
        self.rows = {name: sum(torch.Size(s[:-1]).numel() for s in shapes)
                     for name, shapes in self.shapes.items()}

    def _output(self, sample: torch.Tensor, deltas: dict[str, list[torch.Tensor]]):
        """The output of one sample with ``deltas`` added to every call's pre-activation, and
        the inputs of those calls."""
        calls = dict.fromkeys(self.layers, 0)
        inputs: dict[str, list[torch.Tensor]] = {name: [] for name in self.layers}

        def hook(name: str):
            def add(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
                k = calls[name]
                if k >= len(deltas[name]) or out.shape != deltas[name][k].shape:
                    raise ValueError(
                        f"Linear layer {name!r} is called differently for different samples "
                        f"(call {k + 1}, output of shape {tuple(out.shape)}); ecprune needs the "
                        "same calls and shapes for every sample.")
                calls[name] += 1
                inputs[name].append(args[0].reshape(-1, args[0].shape[-1]))
                return out + deltas[name][k]
            return add

        handles = [layer.register_forward_hook(hook(name)) for name, layer in self.layers.items()]
        try:
            raw = self.model(sample[None])
        finally:
            for handle in handles:
                handle.remove()
        output = raw if self.output_fn is None else self.output_fn(raw)
        return output.reshape(-1), {name: torch.cat(rows) for name, rows in inputs.items()}

    def tiles(self, inputs: torch.Tensor, output: torch.Tensor, tape: LayerTape,
              directions: torch.Tensor,
              shifts: dict[str, torch.Tensor]) -> Iterator[dict[str, LayerRows]]:
        """Per tile of samples, every layer's :class:`LayerRows`; ``directions`` (B, k, n_out):
        per sample, the output directions ``z``; ``shifts``: each layer's input shift. Tiles
        keep the cotangents near ``JACOBIAN_ELEMENTS``. (``output`` and ``tape``, of the
        chunk's own forward, are not needed: every sample runs again on its own.)"""
        del output
        with tape.paused():
            yield from self._tiles(inputs, directions, shifts)

    def _tiles(self, inputs: torch.Tensor, directions: torch.Tensor,
               shifts: dict[str, torch.Tensor]) -> Iterator[dict[str, LayerRows]]:
        reference = next(iter(self.layers.values())).weight
        deltas = {name: [torch.zeros(s, dtype=reference.dtype, device=reference.device)
                         for s in shapes] for name, shapes in self.shapes.items()}

        def per_sample(sample: torch.Tensor, z: torch.Tensor):
            _, pullback, rows = vjp(lambda d: self._output(sample, d), deltas, has_aux=True)
            (cotangents,) = vmap(pullback)(z)
            flat = {name: torch.cat([c.reshape(len(z), -1, c.shape[-1]) for c in calls], 1)
                    for name, calls in cotangents.items()}
            return flat, rows

        width = sum(self.rows[name] * layer.out_features for name, layer in self.layers.items())
        step = max(1, JACOBIAN_ELEMENTS // max(1, directions.shape[1] * width))
        for k in range(0, len(inputs), step):
            cotangents, rows = vmap(per_sample)(inputs[k:k + step], directions[k:k + step])
            yield {name: LayerRows(cotangents[name].unbind(1),
                                   rows[name] - shifts[name].to(rows[name].dtype))
                   for name in self.layers}


class BlockJacobians:
    """The same cotangents as :class:`PerSampleJacobians` when every sample's rows are a block
    of the batch's rows (:func:`sample_blocks`): one reverse pass through the chunk's own
    forward per direction (``is_grads_batched`` measured up to 4 times slower on the CPU),
    yielded in tiles of as many directions as keep them near ``JACOBIAN_ELEMENTS``."""

    needs_graph = True  # reverse passes through the chunk's forward

    def __init__(self, layers: dict[str, nn.Linear], blocks: dict[str, list[int]]):
        self.layers, self.blocks = layers, blocks

    def samples_per_pass(self) -> int:
        """Samples per pass: the largest activation of their rows (rows x the wider of a
        layer's input and output) has at most ``BLOCK_ELEMENTS`` elements (at least one
        sample)."""
        per_sample = max(sum(self.blocks[name]) * max(layer.in_features, layer.out_features)
                         for name, layer in self.layers.items())
        return max(1, BLOCK_ELEMENTS // per_sample)

    def tiles(self, inputs: torch.Tensor, output: torch.Tensor, tape: LayerTape,
              directions: torch.Tensor,
              shifts: dict[str, torch.Tensor]) -> Iterator[dict[str, LayerRows]]:
        batch, k = directions.shape[:2]
        calls = [(name, a, u) for name in self.layers for a, u in tape.calls[name]]
        for name in self.layers:
            rows = [a.numel() // a.shape[-1] for a, _ in tape.calls[name]]
            if rows != [batch * block for block in self.blocks[name]]:
                raise ValueError(
                    f"Linear layer {name!r} had {self.blocks[name]} rows per sample in its calls "
                    f"on the first chunk but {rows} rows for {batch} samples on this one; pass "
                    "positions='exact'.")
        inputs_by_layer = {name: _cat([a.reshape(batch, -1, a.shape[-1])
                                       for a, _ in tape.calls[name]], 1)
                                 - shifts[name].to(tape.calls[name][0][0].dtype)
                           for name in self.layers}
        width = sum(u.numel() for _, _, u in calls)
        group = max(1, JACOBIAN_ELEMENTS // max(1, width))
        for start in range(0, k, group):
            tile: dict[str, list[torch.Tensor]] = {name: [] for name in self.layers}
            for z in range(start, min(k, start + group)):
                grads = torch.autograd.grad(output, [u for _, _, u in calls],
                                            grad_outputs=directions[:, z],
                                            retain_graph=z < k - 1, allow_unused=True)
                by_layer: dict[str, list[torch.Tensor]] = {name: [] for name in self.layers}
                for (name, _, u), grad in zip(calls, grads, strict=True):
                    grad = torch.zeros_like(u) if grad is None else grad
                    by_layer[name].append(grad.reshape(batch, -1, u.shape[-1]))
                for name, parts in by_layer.items():
                    tile[name].append(_cat(parts, 1))
            yield {name: LayerRows(tuple(c), inputs_by_layer[name]) for name, c in tile.items()}


def _cat(parts: list[torch.Tensor], dim: int) -> torch.Tensor:
    """``torch.cat`` without the copy of a single part."""
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim)


def exact_directions(batch: int, n_out: int, *, dtype: torch.dtype,
                     device: torch.device) -> torch.Tensor:
    """The output basis for every sample: (B, n_out, n_out)."""
    return torch.eye(n_out, dtype=dtype, device=device).expand(batch, n_out, n_out)


def position_sums(rows: LayerRows, *, independent: bool, products: str = "model"):
    """One chunk's ``(S, P, Q, D)`` of a layer in the model's dtype: ``S = sum |G|^2``
    (n_out), ``P = sum G . H`` and ``Q = sum |H|^2`` (n_out, n_in), with ``H`` taken about the
    layer's input shift, and ``D = sum_p |g_p|^2`` (n_out), the rows' own sensitivities.
    ``independent``: rows treated as samples (``G, H`` of each row alone, no cross terms).
    ``products="bfloat16"``: each ``H`` of ``Q`` is a bfloat16 GEMM of ``c`` and ``a`` rounded
    to bfloat16 (:data:`PRODUCTS`); ``P``, one GEMM over all rows, stays in the model's dtype."""
    c, a = rows.cotangents, rows.inputs  # k x (B, R, o), (B, R, i)
    batch, _, n_out = c[0].shape
    n_in = a.shape[-1]
    if independent:
        s = c[0].square()  # (B, R, o): summed over directions
        for c_z in c[1:]:
            s.addcmul_(c_z, c_z)
        s, a = s.reshape(-1, n_out), a.reshape(-1, n_in)
        d = s.sum(0)
        return d, s.T @ a, s.T @ a.square(), d
    g = torch.stack([c_z.sum(1) for c_z in c])  # (k, B, o)
    # P = sum_b sum_z g_zb H_zb = (sum_z g_z c_z)^T a over all rows: one GEMM, no pass over H.
    weighted = c[0] * g[0, :, None]
    for z in range(1, len(c)):
        weighted.addcmul_(c[z], g[z, :, None])
    p = weighted.reshape(-1, n_out).T @ a.reshape(-1, n_in)
    q, d = a.new_zeros(n_out, n_in), a.new_zeros(n_out)
    step = max(1, PRODUCT_ELEMENTS // (n_out * n_in))
    h = a.new_empty(min(step, batch), n_out, n_in)
    low = products == "bfloat16"
    a_low = a.to(torch.bfloat16) if low else a
    h_low = a.new_empty(h.shape, dtype=torch.bfloat16) if low else h
    for c_z in c:
        c_low = c_z.to(torch.bfloat16) if low else c_z
        d += c_z.square().sum((0, 1))
        for b in range(0, batch, step):
            # H of direction z for a few samples, (b, o, R) @ (b, R, i), squared in the cache.
            part = h[:min(step, batch - b)]
            product = h_low[:len(part)]
            torch.bmm(c_low[b:b + step].transpose(1, 2), a_low[b:b + step], out=product)
            if low:
                part.copy_(product)
            q += part.square_().sum(0)
    return g.square().sum((0, 1)), p, q, d
