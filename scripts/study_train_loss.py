"""How confident each variant's model ends its training (docs/results.md, "Smoothness after
training"): the task loss of the last logged interval (TensorBoard `train/<task>/loss`, the
cross-entropy or squared error alone, without any regulariser) of a study's report runs, mean ±
std over the report seeds, per variant of one setting. ℓs is a divergence between output
distributions: a model that ends with a higher training loss predicts less confidently and so
has a lower ℓs whether or not its decisions are harder to flip.

    python scripts/study_train_loss.py studies/smart_parts.yaml sst2_1k
    python scripts/study_train_loss.py studies/mt_glue.yaml rte --seeds tune    # every grid point, chosen one marked *

With `--seeds tune` it reads the tune seeds' runs, every grid point: where a study's fit rule
(`fit`, docs/study.md) is read, before the report runs. A multi-task setting prints each task's loss.
"""
import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from mtsmart.recipes.study.fit import final_task_loss  # noqa: E402
from mtsmart.recipes.study.report import report_values  # noqa: E402
from mtsmart.recipes.study.results import summarise  # noqa: E402
from mtsmart.recipes.study.spec import Job, load_study  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description="each variant's final training task loss, over a study's seeds")
    parser.add_argument("study")
    parser.add_argument("setting")
    parser.add_argument("--seeds", choices=("report", "tune"), default="report",
                        help="the report seeds' runs at each variant's chosen point (default), or the tune seeds' "
                             "runs at every grid point")
    args = parser.parse_args()
    study = load_study(args.study)
    if args.setting not in study.settings:
        sys.exit(f"study_train_loss: unknown setting {args.setting!r}; the study has {list(study.settings)}")
    tasks = study.settings[args.setting]["tasks"]
    for variant, (chosen, _) in report_values(study, args.setting).items():
        if not study.trains(variant):
            continue
        if args.seeds == "report":
            cells, seeds = ([] if chosen is None else [chosen]), study.report_seeds
        else:
            cells, seeds = [point for point, _ in study.points(variant)], study.tune_seeds
        for point in cells:
            runs = [Job(args.setting, variant, point, seed, "", {}).folder(study.runs_dir) for seed in seeds]
            finished = [run for run in runs if (run / "results.json").is_file()]
            for task in tasks if finished else []:
                s = summarise([final_task_loss(run, task) for run in finished])
                mark = "*" if args.seeds == "tune" and point == chosen else " "
                print(f"{variant:18s} {point:34s}{mark} n = {s.n}: final train/{task}/loss {s.mean:.2e} ± {s.std:.1e}")


if __name__ == "__main__":
    main()
