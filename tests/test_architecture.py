"""Where knowledge lives (docs/architecture.md): the package's layers and the imports allowed
between them, no import circle, the recipe imported by the CLI alone, method names only inside the
methods and the options, old config names refused."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mtsmart.options.regularisers import METHODS, method_options_classes
from mtsmart.regularisers.registry import BUILDERS
from mtsmart.options.config import ConfigError, load_config, renamed_to_current

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "mtsmart"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The package's modules a file imports, at any depth of the file (function-level imports too).

    `from mtsmart.a import b` counts as an import of `mtsmart.a.b` when that is a module, else of
    `mtsmart.a`. Imports under `if TYPE_CHECKING:` are for annotations only and never run."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_only = {id(inner) for node in ast.walk(tree)
                 if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
                 for stmt in node.body for inner in ast.walk(stmt)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in known else node.module)
    return found & known


def import_graph(root: Path) -> dict[str, set[str]]:
    files = {module_name(p): p for p in root.rglob("*.py")}
    return {name: imported_modules(path, set(files)) - {name} for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle as a list of modules, or [] (depth-first search with colours)."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return []

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


# The layers of docs/architecture.md, bottom up: a module may import its own layer and the layers
# below it, never one above. The package root holds the entry points (`cli`, `__main__`) and the
# version (`mtsmart`), which any layer may read.
LAYERS = ["support", "options", "arithmetic", "tasks", "data", "model", "regularisers", "step", "components", "recipes"]
ROOT_MODULES = {"mtsmart", "mtsmart.cli", "mtsmart.__main__"}


def layer_of(module: str) -> int | None:
    """The layer's rank of a module of the package, or None for the root's entry points."""
    if module in ROOT_MODULES:
        return None
    return LAYERS.index(module.split(".")[1])


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """`importer -> imported` for every import of a higher layer, or of the command line."""
    found = []
    for importer, imported in graph.items():
        rank = layer_of(importer)
        for target in imported:
            if target in ("mtsmart.cli", "mtsmart.__main__") and importer != "mtsmart.__main__":
                found.append(f"{importer} -> {target}")
            elif rank is not None and layer_of(target) is not None and layer_of(target) > rank:
                found.append(f"{importer} -> {target}")
    return sorted(found)


def test_ls_mtsmart_shows_the_layers():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    modules = {p.name for p in PACKAGE.glob("*.py")}
    assert folders == set(LAYERS)
    assert modules == {"__init__.py", "__main__.py", "cli.py"}
    assert all((PACKAGE / layer / "__init__.py").is_file() for layer in LAYERS)


def test_no_layer_imports_a_layer_above_it():
    assert layer_violations(import_graph(PACKAGE)) == []


def test_the_layer_rule_finds_an_upward_import():
    graph = {"mtsmart.options.config": {"mtsmart.model.multitask"}, "mtsmart.recipes.train": {"mtsmart.options.config"},
             "mtsmart.components.build": {"mtsmart.cli"}}
    assert layer_violations(graph) == ["mtsmart.components.build -> mtsmart.cli", "mtsmart.options.config -> mtsmart.model.multitask"]


def test_the_cycle_finder_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_imports_for_annotations_only_are_not_edges(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("from typing import TYPE_CHECKING\nimport mtsmart.a\nif TYPE_CHECKING:\n    import mtsmart.b\n")
    assert imported_modules(source, {"mtsmart.a", "mtsmart.b"}) == {"mtsmart.a"}


def test_no_import_circle_in_the_package():
    graph = import_graph(PACKAGE)
    assert "mtsmart.regularisers.registry" in graph and graph["mtsmart.regularisers.registry"]
    assert find_cycle(graph) == []


def test_the_training_recipe_is_imported_by_the_cli_alone():
    importers = []
    for folder in ("mtsmart", "scripts", "examples"):
        for path in (REPO / folder).rglob("*.py"):
            if "mtsmart.recipes.train" in imported_modules(path, {"mtsmart.recipes.train"}):
                importers.append(str(path.relative_to(REPO)))
    assert importers == ["mtsmart/cli.py"]


def string_constants(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value) for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
        and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }
    return {node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings}


def test_no_method_name_outside_the_methods_and_the_config():
    """The loop, the DDP code and the logging read what a method declares, never which it is."""
    names = set(METHODS) - {"none"}
    allowed = set((PACKAGE / "options").glob("*.py"))
    leaks = {}
    for path in PACKAGE.rglob("*.py"):
        if "regularisers" in path.relative_to(PACKAGE).parts or path in allowed:
            continue
        # A name inside a longer string is prose or a message; a string that *is* a name is code.
        hits = names & string_constants(path)
        if hits:
            leaks[str(path.relative_to(REPO))] = sorted(hits)
    assert leaks == {}


def test_every_method_the_config_accepts_has_a_builder():
    classes = method_options_classes()
    assert set(classes) == set(METHODS)
    assert {type(None) if cls is None else cls for cls in classes.values()} == set(BUILDERS)


def test_reading_a_config_does_not_load_the_encoder_libraries():
    code = "import sys, mtsmart.options.config; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("override, message", [
    ("smart.noise_std=1e-5", "smart.noise_std is now called smart.init_scale"),
    ("adversarial.alpha=0.3", "adversarial.alpha is now one key per method: pgd.step_size, freelb.step_size"),
    ("adversarial.weight=0.3", "adversarial.weight is now one key per method: .*rdrop.alpha"),
    ("adversarial.epsilon=0.3", "adversarial.epsilon is now one key per method: fgsm.epsilon, fgm.epsilon"),
    ("smart.level=sentence", "smart.level: 'sentence' is now called 'example'"),
])
def test_old_names_are_refused_with_the_new_one(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_a_run_written_before_the_rename_still_loads_and_resumes(tmp_path):
    """A run's own config.yaml (and a checkpoint's saved config) with the old names is read as the
    current ones; only a config a person writes is refused."""
    from mtsmart.components.checkpoint import config_differences
    from mtsmart.options.config import config_to_dict, renamed_to_current

    old = config_to_dict(load_config(None, ["smart.init_scale=3e-5", "smart.level=example", "adversarial.method=pgd",
                                             "pgd.step_size=0.1", "pgd.steps=2"]))
    old["smart"]["noise_std"] = old["smart"].pop("init_scale")
    old["smart"]["level"] = "sentence"
    for section in ("fgsm", "fgm", "pgd", "freelb", "gradient_penalty", "r3f", "rdrop"):
        del old[section]
    del old["smart"]["guard"]
    # The flat adversarial.* section of before, as mtsmart wrote it.
    old["adversarial"] = {"method": "pgd", "scope": "example", "epsilon": 1.0, "alpha": 0.1, "steps": 2, "norm": "auto",
                          "init": "normal", "init_scale": 1e-5, "weight": 1.0}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(old), encoding="utf-8")
    with pytest.raises(ConfigError, match="is now"):
        load_config(path)
    cfg = load_config(path, written_by_mtsmart=True)
    assert (cfg.smart.init_scale, cfg.smart.level) == (3e-5, "example")
    assert (cfg.pgd.step_size, cfg.pgd.steps, cfg.pgd.norm, cfg.adversarial.method) == (0.1, 2, "l2", "pgd")
    assert config_differences(renamed_to_current(old), config_to_dict(cfg)) == []
    assert "noise_std" in old["smart"]  # the saved dict itself is left as it was


@pytest.mark.parametrize("method, old, section, expected", [
    ("rdrop", {"weight": 0.5}, "rdrop", {"alpha": 0.5}),
    ("r3f", {"init": "uniform", "init_scale": 1e-3, "weight": 2.0}, "r3f", {"init": "uniform", "init_scale": 1e-3, "weight": 2.0}),
    ("fgsm", {"epsilon": 0.2, "scope": "matrix", "norm": "auto"}, "fgsm", {"epsilon": 0.2, "scope": "matrix"}),
    ("gradient_penalty", {"epsilon": 0.5, "weight": 3.0, "steps": 9}, "gradient_penalty", {"epsilon": 0.5, "weight": 3.0}),
])
def test_a_saved_flat_adversarial_section_goes_to_the_chosen_method(method, old, section, expected):
    from mtsmart.options.config import config_from_dict

    cfg = config_from_dict(renamed_to_current({"adversarial": {"method": method, **old}}))
    assert {key: getattr(getattr(cfg, section), key) for key in expected} == expected


def test_a_saved_release_rule_epsilon_becomes_its_guard():
    from mtsmart.options.config import config_from_dict

    saved = {"smart": {"update": "release", "epsilon": 1e-6}}
    cfg = config_from_dict(renamed_to_current(saved))
    assert (cfg.smart.guard, cfg.smart.epsilon) == (1e-6, 1e-5)
    paper = config_from_dict(renamed_to_current({"smart": {"update": "paper", "epsilon": 1e-3}}))
    assert (paper.smart.epsilon, paper.smart.guard) == (1e-3, 1e-5)


def test_a_checkpoint_from_before_a_new_key_resumes():
    """A key added after a checkpoint was written counts as its default (the earlier behaviour)."""
    from mtsmart.components.checkpoint import config_differences
    from mtsmart.options.config import config_to_dict

    current = config_to_dict(load_config(None, []))
    saved = config_to_dict(load_config(None, []))
    del saved["train"]["record_step_times"], saved["data"]["train_examples"]
    assert config_differences(saved, current) == []
    saved["train"]["lr"] = 1.0
    assert config_differences(saved, current) == ["train.lr"]


def test_the_options_name_what_the_arithmetic_implements():
    from mtsmart.arithmetic import divergence, perturbation
    from mtsmart.options import smart as smart_config

    assert set(smart_config.DIVERGENCES) == set(divergence.DIVERGENCES)
    assert smart_config.NORMS == perturbation.NORMS and smart_config.LEVELS == perturbation.LEVELS


def to_flat_adversarial(config: dict) -> dict:
    """A config as mtsmart wrote it before one section per method (issue 27)."""
    old = {key: value for key, value in config.items() if key not in ("fgsm", "fgm", "pgd", "freelb", "gradient_penalty", "r3f", "rdrop")}
    old["smart"] = {k: v for k, v in config["smart"].items() if k != "guard"}
    old["adversarial"] = {"method": config["adversarial"]["method"], "scope": config["fgm"]["scope"],
                          "epsilon": config["fgm"]["epsilon"], "step_size": 0.3, "steps": 3, "norm": "auto",
                          "init": "normal", "init_scale": 1e-5, "weight": config["fgm"]["weight"]}
    return old


def convert_run_to_flat_adversarial(out: Path) -> None:
    import hashlib
    import json

    config = yaml.safe_load((out / "config.yaml").read_text())
    if "fgm" in config:
        (out / "config.yaml").write_text(yaml.safe_dump(to_flat_adversarial(config)))
    for checkpoint in (out / "checkpoints").iterdir():
        state = json.loads((checkpoint / "state.json").read_text())
        state["config"] = to_flat_adversarial(state["config"])
        (checkpoint / "state.json").write_text(json.dumps(state))
        sums = json.loads((checkpoint / "checksums.json").read_text())
        sums["state.json"] = hashlib.sha256((checkpoint / "state.json").read_bytes()).hexdigest()
        (checkpoint / "checksums.json").write_text(json.dumps(sums))


def test_a_run_directory_written_before_the_method_sections_resumes_and_evaluates(tmp_path, train_tiny, capsys):
    """config.yaml and every checkpoint's saved config in the old flat form: `train.resume=auto`
    continues the run, and `evaluate` gives the logged results."""
    import json

    from mtsmart.cli import main

    run = ["tasks=[rte]", "adversarial.method=fgm", "fgm.epsilon=0.5", "fgm.weight=0.7", "bregman.mu=0",
           "train.max_steps=3", "train.save_every_steps=1"]
    out = train_tiny(tmp_path / "run", *run, "train.stop_after_steps=1")
    convert_run_to_flat_adversarial(out)
    capsys.readouterr()
    train_tiny(out, *run, "train.resume=auto")
    assert "resume: from" in capsys.readouterr().out
    convert_run_to_flat_adversarial(out)
    assert main(["evaluate", "--run", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["step"] == 3 and report["results"] == json.loads((out / "results.json").read_text())["final"]
