"""All or nothing for edits that change shapes: restore every module of a model as it was.

:mod:`ecprune.masking.apply`'s ``preserved`` restores weight values and masks of fixed shape;
removing units also changes shapes (``in_features``, PReLU's ``num_parameters``, a LayerNorm's
``normalized_shape``) and may add biases. A :class:`Snapshot` keeps, for every module, its
Parameter objects with a copy of their values, their ``.grad``, its buffers and its plain
attributes; :meth:`Snapshot.restore` puts all of it back, into the original Parameter objects
and storage, so identities survive a failure too.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

# Attributes of plain values that describe a module's shapes and settings (in_features, ...).
_PLAIN = (int, float, bool, str, tuple, type(None))


class Snapshot:
    """The state of every module of ``model`` now (values copied, see the module docstring)."""

    def __init__(self, model: nn.Module):
        self.entries = []
        for module in model.modules():
            parameters = {
                key: None if p is None else (p, p.data, p.data.clone(), p.grad)
                for key, p in module._parameters.items()
            }
            buffers = {key: None if b is None else (b, b.data, b.data.clone())
                       for key, b in module._buffers.items()}
            plain = {key: value for key, value in vars(module).items()
                     if not key.startswith("_") and isinstance(value, _PLAIN)}
            self.entries.append((module, parameters, buffers, plain))

    def restore(self) -> None:
        """Put every module back as it was when the snapshot was taken."""
        with torch.no_grad():
            for module, parameters, buffers, plain in self.entries:
                module._parameters.clear()
                for key, saved in parameters.items():
                    if saved is None:
                        module._parameters[key] = None
                        continue
                    parameter, storage, values, grad = saved
                    storage.copy_(values)
                    parameter.data = storage
                    parameter.grad = grad
                    module._parameters[key] = parameter
                module._buffers.clear()
                for key, saved in buffers.items():
                    if saved is not None:
                        buffer, storage, values = saved
                        storage.copy_(values)
                        buffer.data = storage
                    module._buffers[key] = None if saved is None else saved[0]
                for key, value in plain.items():
                    setattr(module, key, value)


@contextmanager
def atomic(model: nn.Module) -> Iterator[None]:
    """Restore ``model`` (:class:`Snapshot`) if the block raises, then re-raise."""
    snapshot = Snapshot(model)
    try:
        yield
    except BaseException:
        snapshot.restore()
        raise


@contextmanager
def restoring(model: nn.Module) -> Iterator[None]:
    """Restore ``model`` when the block ends, whatever happens (trial edits)."""
    snapshot = Snapshot(model)
    try:
        yield
    finally:
        snapshot.restore()
