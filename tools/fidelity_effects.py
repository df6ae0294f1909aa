"""Measure what each ``densebench`` fidelity choice does to mDice: ``python tools/fidelity_effects.py [--out F.json]``.

For each dataset and seed it runs the ``densebench`` preset as it is, then once with each
choice switched to what the project did before matching the reference (no augmentation,
``align_corners`` off, PIL resizing), and reports mean mDice and the mean paired difference
(reference choice - old choice) over seeds. Random-init phikon, small inputs, few epochs:
the numbers show direction and size on these samples only, never real-weight effects.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.run.lifecycle import execute
from harness.run.plan import resolve_config
from harness.run.task import RunContext

#: switch -> (densebench's value, the value before)
SWITCHES = {"augment": ("densebench", "none"), "align_corners": (True, False), "resize": ("cv2", "pil")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="nuclei-sample,synthetic-tissue")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--input-size", type=int, default=64)
    p.add_argument("--model", default="phikon")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="pfmbench-fidelity-") as tmp:
        ctx = RunContext(results_dir=Path(tmp) / "results", device="cpu")
        for dataset in args.datasets.split(","):
            def mdice(seed: int, override: dict[str, object] | None = None, dataset: str = dataset) -> float:
                cfg, _ = resolve_config("segmentation", args.model, dataset, runtime="inprocess", preset="densebench", strategy="frozen",
                                        epochs=args.epochs, input_size=args.input_size, seed=seed, **(override or {}))
                return float(execute(cfg, ctx, write=False).mDice or 0.0)

            started = time.perf_counter()
            base = {s: mdice(s) for s in seeds}
            entry: dict[str, Any] = {"densebench": {"mean": statistics.mean(base.values()), "per_seed": base}}
            for switch, (_, before) in SWITCHES.items():
                other = {s: mdice(s, {switch: before}) for s in seeds}
                diffs = [base[s] - other[s] for s in seeds]
                entry[f"{switch}={before}"] = {"mean": statistics.mean(other.values()), "per_seed": other,
                                               "effect_mean": statistics.mean(diffs), "effect_sd": statistics.stdev(diffs) if len(diffs) > 1 else 0.0}
            entry["wall_s"] = round(time.perf_counter() - started, 1)
            results[dataset] = entry
            print(json.dumps({dataset: entry}, indent=1), flush=True)
    out = {"model": args.model, "weights": "random", "epochs": args.epochs, "input_size": args.input_size, "seeds": seeds, "results": results}
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))
    print("| dataset | switch (densebench vs before) | mDice densebench | mDice before | effect, mean ± sd over seeds |")
    print("|---|---|---|---|---|")
    for dataset, entry in results.items():
        for switch, (now, before) in SWITCHES.items():
            e = entry[f"{switch}={before}"]
            print(f"| {dataset} | {switch}: {now} vs {before} | {entry['densebench']['mean']:.4f} | {e['mean']:.4f} | "
                  f"{e['effect_mean']:+.4f} ± {e['effect_sd']:.4f} |")


if __name__ == "__main__":
    main()
