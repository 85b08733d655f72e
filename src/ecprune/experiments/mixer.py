"""Sequence-shaped layers (issue 15): an MLP-Mixer on MNIST, pruned by every method of the
beyond-the-paper grid (:mod:`.beyond`) but ``ecp-refit-sensitivity``, prune only.

28 x 28 images cut into 7 x 7 patches give 16 tokens of 49 pixels; the Mixer
(:mod:`.mixer_model`) has C = 32 channels, token-mixing MLPs 16 -> 32 -> 16, channel MLPs
32 -> 64 -> 32 and 2 blocks: 12,128 weights in 10 ``nn.Linear`` layers with several rows per
sample and a one-row head. Adam, batch 128, 8 epochs, learning rate 1e-3 decayed to 1e-4.
``magnitude`` is added to answer whether ECP's gain over it carries over from the MLP.
``ecp-refit-sensitivity`` is left out: the library refuses a sensitivity-weighted refit of
layers with several rows per sample.

Every method scores and updates on the first :data:`PRUNE_SAMPLES` training images: the
exact per-sample statistics pass of multi-row layers costs many gradient passes
(docs/sequence-models.md), and on all 60,000 images the grid's ten-step ECP alone would take
hours per seed on one CPU thread. The cost unit, one gradient pass, is measured over those
same images.
"""

from __future__ import annotations

from dataclasses import replace

from .beyond import BEYOND_RATIOS
from .config import ExperimentConfig

MIXER_ARCH = (7, 32, 32, 64, 2)  # patch, channels C, token hidden Dt, channel hidden Dc, blocks
# BEYOND_METHODS without "ecp-refit-sensitivity", with "magnitude" after "ecp".
MIXER_METHODS = ("ecp", "magnitude", "wanda", "sparsegpt", "ecp-refit", "ecp-steps10",
                 "ecp-refit-global", "sparsegpt-refit", "ecp-refit-steps3",
                 "sparsegpt-refit-steps3")
PRUNE_SAMPLES = 2048

MIXER_MNIST = ExperimentConfig(
    name="mixer-mnist", architectures=(MIXER_ARCH,), model="mixer", methods=MIXER_METHODS,
    ratios=BEYOND_RATIOS, seeds=(0, 1, 2), epochs=8, batch_size=128, loss="cross_entropy",
    lr=1e-3, lr_decay=0.1, finetune=False, fully_connected=False, prune_samples=PRUNE_SAMPLES)

# One seed, two ratios, one epoch, 256 pruning samples: every label once, in under a minute.
MIXER_MNIST_QUICK = replace(MIXER_MNIST, ratios=(0.5, 0.9), seeds=(0,), epochs=1,
                            prune_samples=256)
