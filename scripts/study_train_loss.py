"""How confident each variant's model ends its training (docs/results.md, "Smoothness after
training"): the task loss of the last logged interval (TensorBoard `train/<task>/loss`, the
cross-entropy or squared error alone, without any regulariser) of a study's report runs, mean ±
std over the report seeds, per variant of one setting. ℓs is a divergence between output
distributions: a model that ends with a higher training loss predicts less confidently and so
has a lower ℓs whether or not its decisions are harder to flip.

    python scripts/study_train_loss.py studies/smart_parts.yaml sst2_1k
"""
import argparse
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from mtsmart.recipes.study.report import report_values  # noqa: E402
from mtsmart.recipes.study.results import summarise  # noqa: E402
from mtsmart.recipes.study.spec import Job, load_study  # noqa: E402


def final_task_loss(run: Path, task: str) -> float:
    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return events.Scalars(f"train/{task}/loss")[-1].value


def main() -> None:
    parser = argparse.ArgumentParser(description="each variant's final training task loss, over a study's report seeds")
    parser.add_argument("study")
    parser.add_argument("setting")
    args = parser.parse_args()
    study = load_study(args.study)
    (task,) = study.settings[args.setting]["tasks"]  # the study's settings are single-task
    for variant, (point, _) in report_values(study, args.setting).items():
        if point is None:
            continue
        runs = [Job(args.setting, variant, point, seed, "", {}).folder(study.runs_dir) for seed in study.report_seeds]
        losses = [final_task_loss(run, task) for run in runs if (run / "results.json").is_file()]
        if losses:
            s = summarise(losses)
            print(f"{variant:18s} {point:24s} n = {s.n}: final train/{task}/loss {s.mean:.2e} ± {s.std:.1e}")


if __name__ == "__main__":
    main()
