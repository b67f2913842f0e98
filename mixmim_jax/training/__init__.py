"""What the trainers are built from: the plan (config x data x devices), mesh and
partitioning, optimizer and schedules, the compiled steps, checkpoints,
metrics, the loop's bookkeeping, stop signals, distributed start and the
start-up clock."""
