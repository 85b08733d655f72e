"""From scores to masks: the one removal order, exact-k selection, N:M patterns, the apply
transaction and multi-step schedules."""

from .pattern import Pattern, parse_pattern, satisfies_pattern

__all__ = ["Pattern", "parse_pattern", "satisfies_pattern"]
