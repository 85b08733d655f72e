"""What a pruned model becomes: compacted dense layers or sparse (CSR) weights."""
