"""Grid arithmetic for study v2 (docs/study_v2_plan.md): FLOPs, optimizer steps and epochs of every cell.

Pure bookkeeping over the FLOP convention (``MethodConfig.flops_per_token`` in ``embrecipe.models.methods``) and the corpus
statistics; nothing is trained or timed here. The throughput is an INPUT (``--flops-per-s``), a placeholder
until it is measured on the GPU: the wall-time column is only as good as that number.

    python scripts/study_v2_arithmetic.py --family $EMBRECIPE_HOME/testbed/smollm2-family.json \\
        --pairs 251525 --tokens 10870000 --flops-per-s 1e14
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from embrecipe.flops import ModelShape
from embrecipe.models.methods import parse_method

VARIANTS = {
    "full": ("full", {}),
    "freeze-f0.25": ("freeze", {"trainable_blocks": 0.25}),
    "freeze-f0.5": ("freeze", {"trainable_blocks": 0.5}),
    "lora-r8": ("lora", {"rank": 8}),
    "lora-r32": ("lora", {"rank": 32}),
}


def cell(budget: float, per_token: int, batch: int, tokens_per_pair: float, unique_tokens: float
         ) -> tuple[float, float, float]:
    """(D tokens, optimizer steps, epochs) of one budget-exact run: D = C / c, steps = D / (B·t), epochs = D / U."""
    tokens = budget / per_token
    return tokens, tokens / (batch * tokens_per_pair), tokens / unique_tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", required=True, help="testbed family file (smollm2-family.json)")
    ap.add_argument("--pairs", type=float, required=True, help="unique training pairs of the corpus")
    ap.add_argument("--tokens", type=float, required=True,
                    help="unique training tokens (both texts, at the training truncation)")
    ap.add_argument("--budgets", default="1e14,3.16e14,1e15,3.16e15,1e16")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--min-steps", type=float, default=20)
    ap.add_argument("--max-epochs", type=float, default=4)
    ap.add_argument("--lr-candidates", type=int, default=3,
                    help="learning rates tried per (size, variant) at its lowest kept budget (LR protocol)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds at the noise cells")
    ap.add_argument("--seed-cells", type=int, default=3, help="cells repeated with extra seeds")
    ap.add_argument("--seed-budget", type=float, default=None,
                    help="budget of the noise cells (default: the middle budget)")
    ap.add_argument("--flops-per-s", type=float, required=True,
                    help="aggregate model FLOP/s of the sweep on the GPU: a PLACEHOLDER until measured")
    args = ap.parse_args()

    members = json.loads(Path(args.family).read_text())["members"]
    shapes = [ModelShape.from_dict(m["shape"]) for m in members]
    budgets = [float(b) for b in args.budgets.split(",")]
    t = args.tokens / args.pairs
    print(f"corpus: {args.pairs:,.0f} pairs, {args.tokens:,.0f} tokens, {t:.1f} tokens/pair; batch {args.batch}; "
          f"one step = {args.batch * t:,.0f} tokens")
    print()
    print("| model | variant | FLOPs/token | " + " | ".join(f"{b:.3g}" for b in budgets) + " |")
    print("|---|---|---:|" + "---:|" * len(budgets))
    kept_flops, kept, dropped, lr_flops = 0.0, 0, 0, 0.0
    per_budget = dict.fromkeys(budgets, 0.0)
    for shape in shapes:
        for label, (name, hp) in VARIANTS.items():
            c = parse_method(name, **hp).flops_per_token(shape)
            cells = []
            lowest = None
            for b in budgets:
                _, steps, epochs = cell(b, c, args.batch, t, args.tokens)
                if steps < args.min_steps:
                    cells.append(f"— ({steps:.0f} st)")
                    dropped += 1
                    continue
                kept += 1
                kept_flops += b
                lowest = b if lowest is None else lowest
                per_budget[b] += b
                flag = " **!**" if epochs > args.max_epochs else ""
                cells.append(f"{steps:,.0f} st / {epochs:.2g} ep{flag}")
            print(f"| {shape.name} | {label} | {c / 1e6:.1f}M | " + " | ".join(cells) + " |")
            lr_flops += (args.lr_candidates - 1) * (lowest or 0.0)
    print()
    print(f"kept cells: {kept} (dropped, < {args.min_steps:g} steps: {dropped}); "
          f"model FLOPs of one seed of the kept grid: {kept_flops:.3g}")
    for b, f in per_budget.items():
        print(f"  budget {b:.3g}: {f:.3g} FLOPs, {f / args.flops_per_s / 60:.1f} min at the placeholder "
              f"{args.flops_per_s:.3g} FLOP/s")
    seed_budget = args.seed_budget or budgets[len(budgets) // 2]
    seed_flops = (args.seeds - 1) * args.seed_cells * seed_budget
    total = kept_flops + lr_flops + seed_flops
    print(f"LR protocol: {args.lr_candidates - 1} extra LRs per (size, variant) at its lowest kept budget: "
          f"{lr_flops:.3g} FLOPs; noise: {args.seeds - 1} extra seeds x {args.seed_cells} cells at {seed_budget:.3g}: "
          f"{seed_flops:.3g} FLOPs; total {total:.3g} model FLOPs")
    minutes = total / args.flops_per_s / 60
    print(f"wall time at the placeholder throughput {args.flops_per_s:.3g} FLOP/s (TO BE MEASURED): "
          f"{minutes:.1f} min for the total; two 9-minute runs hold {2 * 9 * 60 * args.flops_per_s:.3g} FLOPs; "
          f"the total needs {total / (2 * 9 * 60):.3g} FLOP/s to fit them (no overheads counted)")
    ceiling = {s.name: args.max_epochs * args.tokens * parse_method("full").flops_per_token(s)
               for s in shapes}
    print(f"largest budget with <= {args.max_epochs:g} epochs (full fine-tuning): "
          + ", ".join(f"{k} {v:.3g}" for k, v in ceiling.items()))
    floor = {s.name: args.min_steps * args.batch * t * parse_method("full").flops_per_token(s)
             for s in shapes}
    print(f"smallest budget with >= {args.min_steps:g} steps (full fine-tuning): "
          + ", ".join(f"{k} {v:.3g}" for k, v in floor.items()))


if __name__ == "__main__":
    main()
