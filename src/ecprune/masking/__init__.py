"""From scores to masks: the one removal order, exact-k selection, the apply transaction and
multi-step schedules."""
