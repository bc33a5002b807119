"""Bit-identity of training across a refactor: the smoke config trained a few steps with every
method configuration, each run's final weights (sha256 over every tensor) and results.json.

    python scripts/check_identity.py --out /tmp/identity.json               # record
    python scripts/check_identity.py --out /tmp/after.json --compare /tmp/identity.json

Exit status 1 when --compare finds a configuration whose weights or results differ.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEPS = 6

# name -> overrides of scripts/configs/smoke.yaml (the current option names).
CONFIGS = {
    "plain": ["adversarial.method=none", "bregman.mu=0"],
    "plain_packed_masks": ["adversarial.method=none", "bregman.mu=0", "model.dropout_masks=packed"],
    "smart_paper": ["adversarial.method=smart", "bregman.mu=0", "train.precision=fp32"],
    "smart_release": ["adversarial.method=smart", "smart.update=release", "smart.input=embedding_output",
                      "smart.dropout=independent", "smart.guard=1e-6", "bregman.mu=0"],
    "smart_release_exact_k2": ["adversarial.method=smart", "smart.update=release", "smart.input=embedding_output",
                               "smart.dropout=independent", "smart.guard=1e-6", "smart.outer_gradient=release",
                               "smart.steps=2", "bregman.mu=0"],
    "smart_reference_l2_example_k2_teacher": ["adversarial.method=smart", "smart.update=reference", "smart.norm=l2",
                                              "smart.level=example", "smart.steps=2", "bregman.mu=1"],
    "smart_bf16": ["adversarial.method=smart", "train.precision=bf16", "bregman.mu=0"],
    "smart_paper_relative_radius": ["adversarial.method=smart", "smart.epsilon=1e-2", "smart.epsilon_relative=true", "bregman.mu=0"],
    "teacher_two_phase": ["adversarial.method=none", "bregman.mu=1", "bregman.beta_schedule=two_phase"],
    "fgsm": ["adversarial.method=fgsm", "bregman.mu=0"],
    "fgm": ["adversarial.method=fgm", "fgm.epsilon=0.5", "fgm.weight=0.7", "bregman.mu=0"],
    "fgm_matrix": ["adversarial.method=fgm", "fgm.scope=matrix", "bregman.mu=1"],
    "pgd": ["adversarial.method=pgd", "bregman.mu=0"],
    "pgd_matrix": ["adversarial.method=pgd", "pgd.scope=matrix", "bregman.mu=0"],
    "freelb": ["adversarial.method=freelb", "bregman.mu=0"],
    "freelb_teacher": ["adversarial.method=freelb", "bregman.mu=1"],
    "gradient_penalty": ["adversarial.method=gradient_penalty", "gradient_penalty.epsilon=0.5", "bregman.mu=0"],
    "r3f": ["adversarial.method=r3f", "r3f.init_scale=1e-3", "bregman.mu=0"],
    "rdrop": ["adversarial.method=rdrop", "bregman.mu=0"],
    "rdrop_teacher": ["adversarial.method=rdrop", "rdrop.alpha=0.3", "bregman.mu=1"],
    "gradient_penalty_teacher": ["adversarial.method=gradient_penalty", "bregman.mu=1"],
    "fgsm_matrix_teacher": ["adversarial.method=fgsm", "fgsm.scope=matrix", "bregman.mu=1"],
    "r3f_teacher": ["adversarial.method=r3f", "r3f.init_scale=1e-3", "bregman.mu=1"],
    "pgd_inf_k2": ["adversarial.method=pgd", "pgd.norm=inf", "pgd.steps=2", "pgd.step_size=0.1", "bregman.mu=0"],
}


def weights_digest(checkpoint: Path) -> str:
    from safetensors.torch import load_file

    tensors = load_file(str(checkpoint / "model.safetensors"))
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].contiguous().view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes())
    return digest.hexdigest()


def run(name: str, overrides: list[str], root: Path) -> dict[str, str]:
    out = root / name
    command = [sys.executable, "-m", "mtsmart", "train", "scripts/configs/smoke.yaml", f"output_dir={out}",
               f"train.max_steps={STEPS}", "eval.every_steps=0", *overrides]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{name}: training failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    checkpoint = out / "checkpoints" / f"step_{STEPS:08d}"
    # The scores (keys added later, such as best_per_task, are not a change of what was computed).
    results = {key: value for key, value in json.loads((out / "results.json").read_text()).items() if key in ("final", "best")}
    return {"weights": weights_digest(checkpoint), "results": hashlib.sha256(json.dumps(results, sort_keys=True).encode()).hexdigest()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file of the digests")
    parser.add_argument("--compare", help="digests recorded before, to compare with")
    parser.add_argument("--only", nargs="*", help="configurations to run (default: all)")
    args = parser.parse_args()
    digests = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or CONFIGS:
            digests[name] = run(name, CONFIGS[name], Path(tmp))
            print(f"{name}: {digests[name]['weights'][:16]} {digests[name]['results'][:16]}", flush=True)
    Path(args.out).write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n")
    if not args.compare:
        return 0
    before = json.loads(Path(args.compare).read_text())
    differ = [name for name in digests if before.get(name) != digests[name]]
    print(f"{len(digests) - len(differ)} of {len(digests)} configurations bit-identical" + (f"; differ: {differ}" if differ else ""))
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
