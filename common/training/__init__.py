"""Training: the engine, the three tasks, losses, optimiser and schedule, configs and
their checks, run log, training loaders."""
