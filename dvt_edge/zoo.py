"""The model zoo as a table: exits, token grids, FLOPs and parameters of every variant (params: every weight a checkpoint
holds; trainable: without T2T's fixed sinusoid tables and performer projections). FLOPs are multiply-accumulates counted on
each stage's exported graph, whose reuse resizes are matrix products (the paper's interpolation counts none: about 0.06
GMACs more at T2T-ViT-12's last exit).

    python -m dvt_edge.zoo [--json]
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Optional

import torch

from dvt_edge.models import create_model, describe_model, list_models
from dvt_runtime.cli import DocFormatter, Parser, command_name

SCHEMA = "dvt-edge/zoo/1"


def zoo_rows() -> list[dict]:
    rows = []
    for name in list_models():
        with torch.device("meta"):
            m = create_model(name)
        params = sum(p.numel() for p in m.parameters())  # every weight the checkpoint holds, the fixed ones too
        trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)  # T2T: not its sinusoid tables and performer draws
        rows.append({
            "model": name,
            "input": "x".join(map(str, m.input_shape)),
            "classes": m.cfg.num_classes,
            "exits": [f"{e.grid}x{e.grid}" for e in m.exits],
            # 6 significant digits: a micro model's 0.000345 stays itself, and the table's 3 are not rounded twice (at 4,
            # dvt_small_cifar's 0.0081546 printed as 0.00816)
            "gflops": [float(f"{e.gflops:.6g}") for e in m.exits],
            "params": params,
            "params_m": float(f"{params / 1e6:.4g}"),  # not pre-rounded: 75,406 printed as 0.07M, the card says 0.08M
            "params_trainable": trainable,
            "description": describe_model(name),
        })
    return rows


def format_table(rows: list[dict]) -> str:
    head = f"{'model':<18} {'input':<10} {'exits (tokens)':<22} {'cumulative GFLOPs per exit':<28} {'params':>8} {'trainable':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        g = " / ".join(f"{f:.3g}" for f in r["gflops"])
        lines.append(f"{r['model']:<18} {r['input']:<10} {' / '.join(r['exits']):<22} {g:<28} {r['params_m']:>7.2f}M "
                     f"{r['params_trainable'] / 1e6:>8.2f}M")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = Parser(prog=command_name("python -m dvt_edge.zoo"), description=__doc__, formatter_class=DocFormatter)
    ap.add_argument("--json", action="store_true", help=f"print JSON instead of a table ({SCHEMA}: the rows under \"models\")")
    ap.add_argument("--no-progress", action="store_true", help="accepted as every command takes it (the zoo draws no progress bar)")
    args = ap.parse_args(argv)
    rows = zoo_rows()
    print(json.dumps({"schema": SCHEMA, "schema_version": 1, "models": rows}, indent=2) if args.json else format_table(rows))
    return 0


if __name__ == "__main__":
    from dvt_runtime.console import run_cli

    sys.exit(run_cli(main))
