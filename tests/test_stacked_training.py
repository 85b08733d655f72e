"""K stacked networks behave exactly like K separate ones: forward, training, masks, resume."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import prune as torch_prune

import ecprune
from ecprune.experiments import training
from ecprune.experiments.stacked import StackedMLP, mlp, stacked_losses
from ecprune.experiments.training import TrainSettings, evaluate, train

DTYPE = torch.float64
# Float64 throughout: rtol 1e-10 leaves room for a few hundred Adam steps of rounding (fused
# vs. foreach kernels sum in different orders) yet catches any real difference.
RTOL, ATOL = 1e-10, 1e-12


def data(n=48, n_in=6, classes=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, n_in, dtype=DTYPE, generator=generator)
    return x, torch.randint(0, classes, (n,), generator=generator)


def three_networks(x):
    """A dense net, one pruned by ECP (masks + bias shifts) and a narrower one (padded)."""
    dense = mlp([6, 5, 4, 3], seed=1, dtype=DTYPE)
    pruned = mlp([6, 5, 4, 3], seed=2, dtype=DTYPE)
    ecprune.prune(pruned, x, sparsity=0.6, method="ecp")
    narrow = mlp([6, 3, 2, 3], seed=3, dtype=DTYPE)
    with torch.no_grad():  # distinct PReLU slopes, so a mix-up would show
        for k, model in enumerate((dense, pruned, narrow)):
            for prelu in model[1::2]:
                prelu.weight.fill_(0.1 + 0.2 * k)
    return [dense, pruned, narrow]


def train_alone(model, x, y, epochs, batch_size, seed, rates=None):
    """The reference: one network, plain torch.optim.Adam, the same batch order; ``rates``:
    the learning rate of each epoch (default: Adam's 1e-3 throughout)."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters())
    for epoch in range(epochs):
        if rates is not None:
            optimizer.param_groups[0]["lr"] = rates[epoch]
        for batch in torch.randperm(len(x), generator=generator).split(batch_size):
            optimizer.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()


def test_stacked_forward_equals_each_network():
    x, _ = data()
    models = three_networks(x)
    outputs = StackedMLP.from_models(models)(x)
    assert outputs.shape == (3, len(x), 3)
    for k, model in enumerate(models):
        torch.testing.assert_close(outputs[k], model(x), rtol=1e-12, atol=1e-14)


def test_network_extracts_each_member():
    x, _ = data()
    models = three_networks(x)
    stacked = StackedMLP.from_models(models)
    for k, model in enumerate(models):
        torch.testing.assert_close(stacked.network(k)(x), model(x), rtol=1e-12, atol=1e-14)


def test_batched_training_equals_separate_trainings():
    x, y = data()
    models = three_networks(x)
    stacked = StackedMLP.from_models(models)
    settings = TrainSettings(epochs=3, batch_size=10, loss="cross_entropy", seed=5)
    train(stacked, x, y, settings)
    for k, model in enumerate(models):
        train_alone(model, x, y, settings.epochs, settings.batch_size, settings.seed)
        torch.testing.assert_close(stacked(x)[k], model(x), rtol=RTOL, atol=ATOL)
    # The pruned member's weights match weight_orig * mask entry by entry.
    torch.testing.assert_close(stacked.network(1)[0].weight,
                               models[1][0].weight_orig * models[1][0].weight_mask,
                               rtol=RTOL, atol=ATOL)


def test_learning_rate_decays_geometrically_per_epoch():
    x, y = data()
    models = three_networks(x)
    stacked = StackedMLP.from_models(models)
    settings = TrainSettings(epochs=4, batch_size=16, loss="cross_entropy", seed=2, lr=3e-3,
                             lr_decay=0.1)
    rates = [3e-3, 3e-3 * 0.1 ** (1 / 3), 3e-3 * 0.1 ** (2 / 3), 3e-4]
    assert [settings.learning_rate(e) for e in range(4)] == pytest.approx(rates, rel=1e-12)
    train(stacked, x, y, settings)
    for k, model in enumerate(models):
        train_alone(model, x, y, settings.epochs, settings.batch_size, settings.seed, rates)
        torch.testing.assert_close(stacked(x)[k], model(x), rtol=RTOL, atol=ATOL)
    assert TrainSettings(epochs=1, batch_size=1, loss="mse", seed=0,
                         lr_decay=0.5).learning_rate(0) == 1e-3


def test_on_epoch_sees_each_trained_epoch():
    x, y = data()
    stacked = StackedMLP.from_models(three_networks(x))
    seen = []
    train(stacked, x, y, TrainSettings(epochs=3, batch_size=16, loss="cross_entropy", seed=0),
          on_epoch=lambda epoch: seen.append((epoch, evaluate(stacked, x, y,
                                                               "cross_entropy")[0])))
    assert [epoch for epoch, _ in seen] == [1, 2, 3]
    torch.testing.assert_close(seen[-1][1], evaluate(stacked, x, y, "cross_entropy")[0])
    assert not torch.equal(seen[0][1], seen[-1][1])


def test_pruned_and_padded_weights_stay_exactly_zero():
    x, y = data()
    models = three_networks(x)
    stacked = StackedMLP.from_models(models)
    masks_before = [m.clone() for m in stacked.masks()]
    train(stacked, x, y, TrainSettings(epochs=4, batch_size=8, loss="cross_entropy", seed=0))
    for weight, mask, before in zip(stacked.weights, stacked.masks(), masks_before, strict=True):
        assert torch.equal(mask, before)
        assert torch.all(weight[mask == 0] == 0)
        assert torch.count_nonzero(weight[mask == 1]) == int(mask.sum())
    # The narrow network's padding: units 3, 4 of layer 0 neither have weights nor matter.
    assert torch.all(stacked.weights[0][2, 3:] == 0) and torch.all(stacked.weights[1][2, :, 3:] == 0)


def test_resume_from_checkpoint_is_exact(tmp_path, monkeypatch):
    x, y = data()
    settings = TrainSettings(epochs=3, batch_size=10, loss="cross_entropy", seed=1,
                             lr_decay=0.3)  # the schedule resumes at the right epoch
    straight = StackedMLP.from_models(three_networks(x))
    train(straight, x, y, settings)

    checkpoint = tmp_path / "state.pt"
    save = training._save_checkpoint

    def save_then_die(model, optimizer, epoch, path):
        save(model, optimizer, epoch, path)
        if epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "_save_checkpoint", save_then_die)
    interrupted = StackedMLP.from_models(three_networks(x))
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, x, y, settings, checkpoint=checkpoint)
    monkeypatch.setattr(training, "_save_checkpoint", save)
    resumed = StackedMLP.from_models(three_networks(x))  # fresh weights: all state is on disk
    train(resumed, x, y, settings, checkpoint=checkpoint)
    assert torch.equal(resumed(x), straight(x))
    assert not checkpoint.exists()


def test_stacked_losses_are_each_networks_mean_loss():
    generator = torch.Generator().manual_seed(0)
    outputs = torch.randn(4, 9, 3, dtype=DTYPE, generator=generator)
    labels = torch.randint(0, 3, (9,), generator=generator)
    targets = torch.randn(9, 3, dtype=DTYPE, generator=generator)
    ce = stacked_losses(outputs, labels, "cross_entropy")
    mse = stacked_losses(outputs, targets, "mse")
    for k in range(4):
        torch.testing.assert_close(ce[k], F.cross_entropy(outputs[k], labels))
        torch.testing.assert_close(mse[k], F.mse_loss(outputs[k], targets))
    with pytest.raises(ValueError, match="Unknown loss 'hinge'"):
        stacked_losses(outputs, labels, "hinge")


def test_evaluate_matches_each_network(monkeypatch):
    monkeypatch.setattr(training, "EVAL_CHUNK", 7)  # several chunks, a ragged last one
    x, y = data(n=30)
    models = three_networks(x)
    losses, accuracy = evaluate(StackedMLP.from_models(models), x, y, "cross_entropy")
    for k, model in enumerate(models):
        logits = model(x)
        torch.testing.assert_close(losses[k], F.cross_entropy(logits, y), rtol=1e-12, atol=0)
        assert accuracy[k] == (logits.argmax(1) == y).double().mean()
    _, none = evaluate(StackedMLP.from_models(models), x, torch.randn(30, 3, dtype=DTYPE), "mse")
    assert none is None


def test_stacking_rejects_other_networks():
    with pytest.raises(TypeError, match=r"Only nn\.Sequential"):
        StackedMLP.from_models([torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(),
                                                    torch.nn.Linear(3, 1))])
    with pytest.raises(ValueError, match="depth, input and output widths must agree"):
        StackedMLP.from_models([mlp([4, 3, 2], seed=0), mlp([4, 3, 3, 2], seed=0)])


def test_torch_prune_masks_are_read():
    """Masks made by torch.nn.utils.prune itself (not ecprune) are honoured too."""
    x, _ = data()
    model = mlp([6, 5, 4, 3], seed=4, dtype=DTYPE)
    torch_prune.l1_unstructured(model[0], "weight", amount=0.5)
    stacked = StackedMLP.from_models([model])
    assert int(stacked.masks()[0].sum()) == 15
    torch.testing.assert_close(stacked(x)[0], model(x), rtol=1e-12, atol=1e-14)
