"""bench_quality.py over several seeds and run lengths, one summary: a broad bench to tune on, since one seed and
one run length move by a GT or two per cell (an AP50 step of 0.05) from any change.

    python bench/bench_quality_sweep.py                       # 3 seeds x 50/90/140 frames x the sweep cells
    python bench/bench_quality_sweep.py --set refine.consensus_once_cos=0   # an ablation, same runs

Each (seed, frames) pair is one bench_quality.py run (its own process, --json into --out); the summary is the
mean over every cell of every run of tracker AP / AP50, the tracker/oracle AP50 ratio, how many cells meet the
bar (tracker AP50 >= 0.95 x oracle and >= greedy) and in how many runs mean tracker AP is above the union's."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from bench_quality import passes  # the per-cell bar, as bench_quality.py prints it

HERE = Path(__file__).resolve().parent
SWEEP_CELLS = [f"{s}/{t}/all" for s in ("scannet", "room0", "room1", "wallroom0") for t in ("loop", "wall", "walk")]
SWEEP_CELLS += ["scannet/tour/all", "room0/tour/all", "scannet/wall/merge", "scannet/wall/split"]


def run_one(seed: int, frames: int, args, out: Path) -> list:
    path = out / f"seed{seed}_frames{frames}.json"
    cmd = [sys.executable, str(HERE / "bench_quality.py"), "--seed", str(seed), "--frames", str(frames)]
    cmd += ["--jobs", str(args.jobs), "--json", str(path), "--cells", *args.cells]
    if args.set:
        cmd += ["--set", *args.set]
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bench_quality.py failed for seed {seed}, {frames} frames:\n{done.stderr[-2000:]}")
    return json.loads(path.read_text())["rows"]


def summarise(rows: list) -> dict:
    o = np.array([r["oracle"]["ap50"] for r in rows])
    t50 = np.array([r["tracker"]["ap50"] for r in rows])
    t = np.array([r["tracker"]["ap"] for r in rows])
    u = np.array([r["union"]["ap"] for r in rows])
    return dict(
        ap=float(t.mean()),
        ap50=float(t50.mean()),
        ratio=float(np.mean(t50 / np.maximum(o, 1e-9))),
        at_bar=sum(bool(passes(r)) for r in rows),
        cells=len(rows),
        above_union=bool(t.mean() > u.mean()),
        oracle_ap=float(np.mean([r["oracle"]["ap"] for r in rows])),
        union_ap=float(u.mean()),
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--frames", type=int, nargs="+", default=[50, 90, 140], help="frames per cell, one run each")
    ap.add_argument("--cells", nargs="+", default=SWEEP_CELLS, help="cells (bench_quality.py --cells patterns)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides (ablations)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", help="folder for the per-run JSON (default: a temporary one)")
    ap.add_argument("--json", help="write the summary and every run's rows to this file")
    args = ap.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="bench_sweep_"))
    out.mkdir(parents=True, exist_ok=True)
    every, runs = [], []
    for seed in args.seeds:
        for frames in args.frames:
            rows = run_one(seed, frames, args, out)
            s = summarise(rows)
            every += rows
            runs.append(dict(seed=seed, frames=frames, **s))
            print(
                f"seed {seed} frames {frames:>3}: tracker AP {s['ap']:.3f} AP50 {s['ap50']:.3f} "
                f"(oracle AP {s['oracle_ap']:.3f}, union AP {s['union_ap']:.3f}); "
                f"{s['at_bar']}/{s['cells']} cells at the bar",
                flush=True,
            )
    total = summarise(every)
    print(
        f"all {len(runs)} runs: tracker AP {total['ap']:.4f} AP50 {total['ap50']:.4f}, tracker/oracle AP50 "
        f"{total['ratio']:.4f}, {total['at_bar']}/{total['cells']} cells at the bar, mean AP above the union's in "
        f"{sum(r['above_union'] for r in runs)}/{len(runs)} runs (oracle AP {total['oracle_ap']:.4f}, union "
        f"{total['union_ap']:.4f})"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(dict(summary=total, runs=runs, rows=every), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
