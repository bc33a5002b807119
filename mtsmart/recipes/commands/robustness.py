"""`mtsmart robustness --run DIR [--radii 1e-3,1e-2,5e-2] [--attack-steps 10] [--precision fp32]`.

Smoothness (ℓs under random noise and under a PGD attack) and robust metrics on each dev set
(mtsmart.components.robustness); prints a table and writes robustness.json in the run directory.

`--precision` is the precision of the measurement's forward passes; by default the run's own.
Compare runs trained in different precisions at one precision (fp32): under bf16 autocast, a
perturbation below bf16's spacing around x (≈ |x|·2⁻⁸, e.g. 1e-3 at |x| ≈ 0.35) is partly
rounded away by the first matrix product, so the same model measures differently.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from mtsmart.components.build import autocast_factory, device_of
from mtsmart.recipes.commands.common import add_run_arguments, open_run, table
from mtsmart.support.io import atomic_write_json
from mtsmart.support.precision import resolve_precision
from mtsmart.components.robustness import DEFAULT_ATTACK_STEPS, DEFAULT_RADII, LEVEL, NORM, STEP_FACTOR, SetResult, measure
from mtsmart.components.run_dir import RunDirError, run_eval_sets


def radii_list(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--radii {text!r}: give comma-separated numbers, e.g. 1e-3,1e-2") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"--radii {text!r}: give positive numbers")
    return values


def add_parser(commands) -> None:
    parser = commands.add_parser("robustness", help="smoothness and robust metrics of a run under embedding perturbations")
    add_run_arguments(parser)
    default = ",".join(f"{r:g}" for r in DEFAULT_RADII)
    parser.add_argument("--radii", type=radii_list, default=list(DEFAULT_RADII), help=f"ε list, inf-norm per token, absolute (default {default})")
    parser.add_argument("--attack-steps", type=int, default=DEFAULT_ATTACK_STEPS, help="PGD steps K (step size 2.5 ε / K)")
    parser.add_argument("--max-examples", type=int, default=None, help="first N examples per dev set; 0 = all (default: the run's eval.max_examples)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random noise and the attacks' random starts")
    parser.add_argument("--precision", choices=("run", "fp32", "bf16", "fp16"), default="run",
                        help="precision of the measurement (default: the run's train.precision); compare runs trained "
                             "in different precisions at one, e.g. fp32")
    parser.set_defaults(handler=run)


def as_json(results: dict[str, SetResult]) -> dict:
    return {
        name: {**dataclasses.asdict(result), "radii": {f"{eps:g}": dataclasses.asdict(r) for eps, r in result.radii.items()}}
        for name, result in results.items()
    }


def result_rows(results: dict[str, SetResult]) -> list[list[str]]:
    rows = [["evaluation", "ε", "ℓs random", "ℓs attack", "metric clean → robust"]]
    for name, result in results.items():
        for eps, r in result.radii.items():
            metrics = ", ".join(f"{m} {result.clean[m]:.4f} → {r.robust[m]:.4f}" for m in result.clean)
            rows.append([name, f"{eps:g}", f"{r.random:.3e}", f"{r.attack:.3e}", metrics])
    return rows


def run(args: argparse.Namespace) -> int:
    if args.attack_steps < 1:
        raise RunDirError(f"--attack-steps: {args.attack_steps} must be at least 1")
    if args.precision == "fp16" and device_of().type != "cuda":  # refused before anything is loaded
        raise RunDirError("--precision fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
    loaded = open_run(args)
    requested = loaded.cfg.train.precision if args.precision == "run" else args.precision
    precision = resolve_precision(requested, loaded.device)[0]
    eval_sets, _ = run_eval_sets(loaded, "dev", args.max_examples)
    results = measure(loaded.model, eval_sets, args.radii, args.attack_steps, loaded.device,
                      autocast_factory(precision, loaded.device), args.seed)
    report = {
        "checkpoint": str(loaded.checkpoint),
        "step": loaded.step,
        "precision": precision,
        "norm": NORM,
        "level": LEVEL,
        "attack_steps": args.attack_steps,
        "attack_step_size": f"{STEP_FACTOR} * epsilon / attack_steps",
        "seed": args.seed,
        "results": as_json(results),
    }
    path = Path(args.run) / "robustness.json"
    atomic_write_json(path, report)
    print(f"{loaded.checkpoint} (step {loaded.step}); ε: inf-norm per token; PGD {args.attack_steps} steps; {precision}")
    for name, result in results.items():
        confidence = "" if result.confidence is None else f", mean confidence {result.confidence:.4f}"
        print(f"{name}: {result.examples} examples, mean ‖x_token‖∞ = {result.embedding_inf_norm:.4f}{confidence}")
    print(table(result_rows(results)))
    print(f"wrote {path}")
    return 0
