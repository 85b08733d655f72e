"""Run a model on chunks in eval mode and record the inputs and outputs of chosen Linear layers.

:class:`LayerTape` holds forward hooks that record each taped layer's input ``a`` and output
``u`` for one forward; :func:`stream` runs the model over a stream of chunks with the tape on.
Every other stage (statistics, reconstruction, measurement) reads the network through these.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import distributed
from .activations import cached_derivatives
from .batching import Batch


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run in eval mode (dropout off, batch-norm frozen), restoring every module's flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, flag in flags:
            module.training = flag


class LayerTape:
    """Forward hooks that record every call of each taped layer in one forward.

    ``calls[name]`` lists ``(a, u)`` per call, in the call's own shape ``(..., features)``;
    ``inputs[name]`` and ``outputs[name]`` are all the rows of all calls, flattened to
    ``(rows, features)`` and concatenated (for a layer called once on ``(batch, features)``, the
    tensors themselves). Checks each input's width. With ``differentiable=True`` the outputs
    are kept in the autograd graph, so gradients with respect to them can be taken even when no
    parameter requires grad.
    """

    def __init__(self, layers: dict[str, nn.Linear], *, differentiable: bool):
        self.layers = layers
        self.differentiable = differentiable
        self.calls: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._rows: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._handles: list = []
        self._paused = False

    def __enter__(self) -> LayerTape:
        for name, layer in self.layers.items():
            self._handles.append(layer.register_forward_pre_hook(self._check(name)))
            self._handles.append(layer.register_forward_hook(self._record(name)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def clear(self) -> None:
        self.calls.clear()
        self._rows.clear()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Record nothing in the block (another forward of the same layers runs in it)."""
        self._paused = True
        try:
            yield
        finally:
            self._paused = False

    @property
    def inputs(self) -> dict[str, torch.Tensor]:
        return {name: self.rows(name)[0] for name in self.calls}

    @property
    def outputs(self) -> dict[str, torch.Tensor]:
        return {name: self.rows(name)[1] for name in self.calls}

    def rows(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a, u)`` of layer ``name``: every row of every call, (rows, features) each."""
        if name not in self._rows:
            calls = self.calls[name]
            if len(calls) == 1 and calls[0][0].ndim == 2:
                self._rows[name] = calls[0]
            else:
                self._rows[name] = tuple(torch.cat([t.reshape(-1, t.shape[-1]) for t in side])
                                         for side in zip(*calls, strict=True))
        return self._rows[name]

    def _check(self, name: str):
        def hook(layer: nn.Linear, args: tuple) -> None:
            (a,) = args[:1]
            if a.ndim == 0 or a.shape[-1] != layer.in_features:
                raise ValueError(
                    f"Linear layer {name!r} expects {layer.in_features} input features but the "
                    f"data gives it {a.shape[-1] if a.ndim else 0} (input of shape "
                    f"{tuple(a.shape)}). Check that the data's width fits the model."
                )

        return hook

    def _record(self, name: str):
        def hook(layer: nn.Linear, args: tuple, output: torch.Tensor) -> torch.Tensor:
            if self._paused:
                return output
            if self.differentiable and not output.requires_grad:
                output = output.detach().requires_grad_()
            self.calls.setdefault(name, []).append((args[0].detach(), output))
            self._rows.pop(name, None)
            return output

        return hook


def forward(model: Callable[[torch.Tensor], object], inputs: torch.Tensor,
            output_fn: Callable[[object], torch.Tensor] | None) -> tuple[object, torch.Tensor]:
    """Run the model (or a :class:`ChainRun` of it); return its raw output and the sensitivity
    output flattened to (B, n_out)."""
    try:
        raw = model(inputs)
    except (RuntimeError, IndexError) as err:
        raise ValueError(
            f"The model failed on a data batch of shape {tuple(inputs.shape)}; check that the "
            f"data fits the model's input. PyTorch said: {err}"
        ) from err
    output = raw if output_fn is None else output_fn(raw)
    if not isinstance(output, torch.Tensor):
        raise TypeError(
            f"The model output used for the sensitivities is a {type(output).__name__}; expected "
            "a tensor. Pass output_fn= to pick the tensor (e.g. lambda out: out[0])."
        )
    if output.ndim == 0 or output.shape[0] != inputs.shape[0]:
        raise ValueError(
            f"The model output has shape {tuple(output.shape)} for {inputs.shape[0]} inputs; "
            "expected the batch as its first dimension."
        )
    return raw, output.reshape(output.shape[0], -1)


def stream(
    model: nn.Module,
    layers: dict[str, nn.Linear],
    batches: Iterable[Batch],
    *,
    differentiable: bool,
    output_fn: Callable[[object], torch.Tensor] | None = None,
    progress: bool | None = None,
    desc: str = "statistics",
    runner: Callable[[torch.Tensor], object] | None = None,
    derivatives_once: bool = False,
) -> Iterator[tuple[Batch, LayerTape, object, torch.Tensor]]:
    """Run ``model`` (in eval mode) on each chunk; yield ``(batch, tape, raw, output)``.

    The tape holds that chunk's layer inputs and outputs; ``output`` is the sensitivity output
    flattened to (B, n_out). With ``differentiable`` the layer outputs stay in the graph.
    ``runner`` evaluates the model in its place (a :class:`ChainRun` of it).
    ``derivatives_once``: activation modules evaluate their derivative in the forward, for
    several reverse passes through one graph (:func:`~.activations.cached_derivatives`).
    """
    with (eval_mode(model), LayerTape(layers, differentiable=differentiable) as tape,
          cached_derivatives(model, derivatives_once)):
        for batch in tqdm(batches, desc=desc, unit="chunk", disable=progress_disabled(progress),
                          leave=False):
            tape.clear()
            with torch.set_grad_enabled(differentiable):
                raw, output = forward(runner or model, batch.inputs, output_fn)
            _check_all_layers_ran(tape, layers)
            yield batch, tape, raw, output


def _check_all_layers_ran(tape: LayerTape, layers: dict[str, nn.Linear]) -> None:
    missing = [name for name in layers if name not in tape.calls]
    if missing:
        raise ValueError(
            f"The Linear layers {missing} were not called in the model's forward pass, so they "
            "cannot be scored. Exclude them with 'layers='."
        )


def progress_disabled(progress: bool | None) -> bool | None:
    """tqdm's ``disable``: None shows a bar only on a terminal, and only on rank 0."""
    if not distributed.is_main_process():
        return True
    return None if progress is None else not progress
