"""Layer-wise reconstructions after selection: Gram systems, the least-squares refit,
SparseGPT and the refit allocation."""
