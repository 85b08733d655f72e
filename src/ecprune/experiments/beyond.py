"""Beyond the paper (issue 9): one-shot weight reconstruction, iterative ECP and the strongest
published one-shot criteria, prune only, on the MNIST experiment's networks and protocol.

Labels (:mod:`.methods`): ``ecp-refit`` (ECP's selection within each layer, per-layer counts
from the refit error curves, then a layer-wise least-squares refit of the kept weights, the
default plain fit), ``ecp-refit-global`` (the same with ECP's global ranking setting the counts)
and ``ecp-refit-sensitivity`` (the fit weighted by ECP's output sensitivity), ``sparsegpt``,
``wanda`` (per-row scope), ``ecp-steps10`` (ECP in ten steps, re-scored after each) and plain
``ecp``; ``sparsegpt-refit`` (SparseGPT's selection and update, then the same refit) tests
whether OBS saliency selects better once weights are refit; ``ecp-refit-steps3`` and
``sparsegpt-refit-steps3`` refit after each of three steps.

``beyond-diffsorp``: the same labels on the diffusion-sorption experiment's two networks
(68-32-32-32-1 and 68-64-32-32-16-16-1, MSE, its training protocol) at noise level d = 0.005.
"""

from __future__ import annotations

from dataclasses import replace

from .diffsorp import ARCHITECTURES, DIFFSORP, noise_variant
from .mnist import MNIST

BEYOND_METHODS = ("ecp", "wanda", "sparsegpt", "ecp-refit", "ecp-steps10",
                  "ecp-refit-global", "ecp-refit-sensitivity", "sparsegpt-refit",
                  "ecp-refit-steps3", "sparsegpt-refit-steps3")
BEYOND_RATIOS = (0.5, 0.7, 0.8, 0.9, 0.95)

BEYOND_MNIST = replace(MNIST, name="beyond-mnist", architectures=((784, 64, 64, 10),),
                       methods=BEYOND_METHODS, ratios=BEYOND_RATIOS, finetune=False,
                       fully_connected=False)

# One seed, two ratios, 2 epochs of the smaller network: every label once, in a few minutes.
BEYOND_MNIST_QUICK = replace(BEYOND_MNIST, architectures=((784, 32, 32, 10),), seeds=(0,),
                             ratios=(0.5, 0.9), epochs=2)

BEYOND_DIFFSORP = replace(DIFFSORP, name="beyond-diffsorp", variants=(noise_variant(0.005),),
                          methods=BEYOND_METHODS, ratios=BEYOND_RATIOS, finetune=False,
                          fully_connected=False)
BEYOND_DIFFSORP_QUICK = replace(BEYOND_DIFFSORP, architectures=ARCHITECTURES[1:], seeds=(0,),
                                ratios=(0.5, 0.9), epochs=2)
