"""fp32 ÷ bf16 of the robustness measurement on the same checkpoints (docs/results.md, "Smoothness
is measured in fp32"): each sst2_1k report run's fp32 robustness.json against its bf16 measurement
kept in studies/smart_parts_extra/robustness_bf16/; geometric mean of the per-run ratios with a
95% t-interval on the log ratios.

    python scripts/robustness_precision.py
"""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from mtsmart.recipes.study.results import paired_ratio  # noqa: E402

FOLDERS = {"plain": "plain/default", "rdrop": "rdrop/rdrop.alpha_0.5", "r3f": "r3f/default",
           "rs_release_indep": "rs_release_indep/smart.weight_1.0"}


def main() -> None:
    pairs: dict[tuple[str, str], dict[int, tuple[float, float]]] = {}
    for index, old in enumerate(sorted((ROOT / "studies/smart_parts_extra/robustness_bf16").glob("*_seed_*.json"))):
        variant, seed = old.stem.rsplit("_seed_", 1)
        new = ROOT / "studies/smart_parts/runs/sst2_1k" / FOLDERS[variant] / f"seed_{seed}" / "robustness.json"
        if not new.is_file():
            continue
        fp32, bf16 = json.loads(new.read_text())["results"]["sst2"], json.loads(old.read_text())["results"]["sst2"]
        for eps in fp32["radii"]:
            for kind in ("attack", "random"):
                pairs.setdefault((eps, kind), {})[index] = (fp32["radii"][eps][kind], bf16["radii"][eps][kind])
    for (eps, kind), runs in sorted(pairs.items()):
        r = paired_ratio({i: a for i, (a, _) in runs.items()}, {i: b for i, (_, b) in runs.items()})
        print(f"ε {eps} ℓs {kind:6s} n = {r.n:2d}: fp32 ÷ bf16 {r.geometric_mean:.2f} [{r.low:.2f}, {r.high:.2f}]")


if __name__ == "__main__":
    main()
