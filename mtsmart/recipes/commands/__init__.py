"""Sub-commands of `mtsmart` other than train: each module has `add_parser(commands)` and `run(args)`."""
from mtsmart.recipes.commands import evaluate, export, predict, robustness, study

COMMANDS = (evaluate, predict, export, robustness, study)
