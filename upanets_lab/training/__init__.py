"""Training: the run and its epoch loop (loop), the step (engine), checkpoints of a run, the optimizer and schedule,
the recipes, the speed choice (tuning), logging (logs) and processes (distributed)."""
