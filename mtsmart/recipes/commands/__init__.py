"""Sub-commands of `mtsmart` other than train: each module has `add_parser(commands)` and `run(args)`."""
from mtsmart.recipes.commands import evaluate, export, finetune, predict, robustness, study

COMMANDS = (evaluate, predict, export, finetune, robustness, study)
