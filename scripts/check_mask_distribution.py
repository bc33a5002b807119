"""Do packed dropout masks give a model in training the output distribution torch's masks give it?

    python scripts/check_mask_distribution.py                    # MiniLM, 1,000 forwards, fp32
    python scripts/check_mask_distribution.py --precision bf16 --forwards 300
    python scripts/check_mask_distribution.py --quick            # tiny random BERT (smoke run)

One model (an STS-B head on the encoder) and a copy of it with `model.dropout_masks=packed`
(mtsmart.model.packed_dropout), the same padded batch of 8 × 64 random tokens, many forwards in
training mode (every dropout on, no gradients). Printed per example: the output's mean and spread
under each kind of mask, and the z-score of the difference of means; and the ratio of the mean
variances. Equal distributions give |z| mostly below 2 and a ratio near 1 (docs/performance.md).
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

from mtsmart.components import build  # noqa: E402
from mtsmart.model.multitask import task_output  # noqa: E402
from mtsmart.model.packed_dropout import use_packed_dropout  # noqa: E402
from mtsmart.options.config import load_config  # noqa: E402
from mtsmart.tasks.batch import Batch  # noqa: E402


def outputs(model, batch: Batch, forwards: int, autocast) -> torch.Tensor:
    with torch.no_grad(), autocast():
        return torch.stack([task_output(model, batch).float() for _ in range(forwards)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--forwards", type=int, default=1000)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model_args = ["model.name_or_path=tiny", "model.tiny_hidden_size=32"] if args.quick else ["model.name_or_path=minilm"]
    cfg = load_config(None, ["tasks=[stsb]", *model_args])
    specs, tokenizer = build.load_specs(cfg), build.build_tokenizer(cfg)
    torch.manual_seed(0)
    model = build.build_model(cfg, specs, tokenizer, torch.device("cpu")).train()
    packed = copy.deepcopy(model)
    use_packed_dropout(packed, cfg.model.attn_implementation)
    ids = torch.randint(1000, len(tokenizer), (8, 64))
    mask = torch.ones_like(ids)
    mask[4:, 40:] = 0  # half the rows padded
    batch = Batch(task="stsb", input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids), labels=torch.zeros(8))
    autocast = build.autocast_factory(args.precision, torch.device("cpu"))
    theirs = outputs(model, batch, args.forwards, autocast)
    ours = outputs(packed, batch, args.forwards, autocast)
    z = (ours.mean(0) - theirs.mean(0)) / torch.sqrt((ours.var(0) + theirs.var(0)) / args.forwards)
    print(f"{cfg.model.name_or_path}, {args.precision}, {args.forwards} training forwards per kind of mask")
    print(f"{'example':>7} {'mean torch':>10} {'mean packed':>11} {'z':>6} {'std torch':>9} {'std packed':>10}")
    for i in range(ids.shape[0]):
        print(f"{i:>7} {theirs.mean(0)[i]:>10.4f} {ours.mean(0)[i]:>11.4f} {z[i]:>6.2f} "
              f"{theirs.std(0)[i]:>9.4f} {ours.std(0)[i]:>10.4f}")
    print(f"variance ratio packed / torch (mean over examples): {float(ours.var(0).mean() / theirs.var(0).mean()):.3f}")


if __name__ == "__main__":
    main()
