"""Layer 3, tasks: task files (`spec`), the three task types and what depends on them (`types`:
head width, loss, divergence, prediction, metrics), and the batch a task's loader yields."""
