"""`opentrack`: the ROS-free command line of ros2_opentrack.

    opentrack demo                                   synthetic room -> pipeline -> AP, in seconds on a CPU
    opentrack run SCENE --out DIR [--config YAML] [--set key=value ...] [--resume DIR [--start N]]
    opentrack eval DIR --gt SCENE                    ScanNet-style AP / AP50 / AP25 (+ per class)
    opentrack query DIR "red mug"                    rank the saved instances of a run by text
    opentrack convert SCENE out.mcap                 scene folder -> ROS 2 bag
    opentrack bench SCENE                            per-stage timings
    opentrack doctor [--all]                         which backends can run here (--all: every known one)

Errors in the input (InputError, ConfigError, BackendUnavailable) print one line to stderr and exit with 2.
Exit codes: 0 done, 1 no query match, 2 bad input / config / output folder, 3 no frame of the scene was usable,
130 interrupted (a run stopped by Ctrl-C or SIGTERM still writes what it tracked so far)."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .errors import BackendUnavailable, ConfigError, InputError, OpenTrackError

EXIT_INPUT = 2
EXIT_NO_FRAMES = 3
EXIT_INTERRUPTED = 130

EPILOG = """examples:
  opentrack demo
  opentrack run 7scenes_redkitchen/ --out runs/kitchen --config config/cpu.yaml --set perception.weights_dir=models/
  opentrack run 7scenes_redkitchen/ --out runs/kitchen2 --resume runs/kitchen   (continue from its map/)
  opentrack run scene0451_01/ --out runs/s0451 --masks dataset
  opentrack eval runs/s0451 --gt scene0451_01/
  opentrack query runs/s0451 "red mug"
  opentrack convert scene0451_01/ s0451.mcap
  opentrack bench scene0451_01/ --max-frames 100 --masks dataset

exit codes: 0 ok, 1 no query match, 2 bad input / config / output folder, 3 no frame was usable (each drop
reason's first case is printed), 130 interrupted (run: Ctrl-C / SIGTERM writes the partial results)
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="opentrack",
        description="Online open-vocabulary 3D instance tracking (OpenTrack3D) from RGB-D + pose, without ROS.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log warnings and progress details")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def scene_options(sp, out_required):
        sp.add_argument("scene", help="ScanNet export folder, 7-Scenes folder, or ROS 2 bag (.mcap / .db3 / folder)")
        if out_required:
            sp.add_argument("--out", required=True, help="output folder (instances.json/.npz/.ply, map.ply)")
        sp.add_argument("--config", help="YAML config (plain or ROS-wrapped); default: config/opentrack.yaml")
        sp.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override one parameter, e.g. --set tracking.tau_match=0.5 (repeatable)",
        )
        sp.add_argument("--stride", type=int, default=1, help="use every N-th frame (default 1)")
        sp.add_argument("--max-frames", type=int, default=None, help="stop after N frames")
        sp.add_argument(
            "--masks",
            choices=("model", "dataset"),
            default=None,
            help="2D masks from the detector+segmenter (model) or the scene's instance/ PNGs (dataset)",
        )

    r = sub.add_parser(
        "run",
        help="run the pipeline over a scene and write the instances",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  opentrack run scene0451_01/ --out runs/s0451 --masks dataset",
    )
    scene_options(r, True)
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument(
        "--resume",
        metavar="DIR",
        help="continue from the map state of an earlier run: DIR/map (written "
        "by every run) or DIR itself when it is a map folder",
    )
    r.add_argument(
        "--start",
        type=int,
        default=None,
        metavar="N",
        help="skip frames with index < N (default with --resume: after the last frame the state saw)",
    )

    e = sub.add_parser(
        "eval",
        help="ScanNet-style AP of a run against ground truth",
        epilog="example:\n  opentrack eval runs/s0451 --gt scene0451_01/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument("run_dir", help="output folder of `opentrack run` (holds instances.npz)")
    e.add_argument("--gt", required=True, help="scene folder with points.ply + gt_instances.txt")
    e.add_argument("--radius", type=float, default=0.05, help="prediction -> GT point transfer radius in m")
    e.add_argument(
        "--min-size",
        type=int,
        default=100,
        help="GT/predicted instances under this many points are ignored (ScanNet: 100)",
    )
    e.add_argument("--json", action="store_true", help="print the result as JSON")

    d = sub.add_parser("demo", help="synthetic room -> pipeline -> AP (no data or weights needed)")
    d.add_argument("--out", help="keep the scene and the run here (default: a temporary folder)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--objects", type=int, default=8)
    d.add_argument("--frames", type=int, default=40)

    q = sub.add_parser(
        "query",
        help="rank the saved instances of a run by text",
        epilog='example:\n  opentrack query runs/s0451 "red mug"',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    q.add_argument("run_dir")
    q.add_argument("text")
    q.add_argument("--top", type=int, default=5)
    q.add_argument("--no-model", action="store_true", help="word matching only (no sentence embedder)")

    c = sub.add_parser("convert", help="write a scene folder as a ROS 2 bag (.mcap or .db3)")
    c.add_argument("scene")
    c.add_argument("out", help="output bag path, e.g. scene.mcap")
    c.add_argument("--stride", type=int, default=1)
    c.add_argument("--max-frames", type=int, default=None)

    b = sub.add_parser(
        "bench",
        help="per-stage timings of the pipeline over a scene",
        description="Per-stage milliseconds per keyframe (median, mean). The stages run one after another, so each "
        "time is that stage's cost; --overlap runs them as `opentrack run` does (concurrent keyframes): the frames/s "
        "line is then the throughput, and the stage times include waiting for the CPU the other threads hold.",
    )
    scene_options(b, False)
    b.add_argument("--overlap", action="store_true", help="overlap the stages of consecutive keyframes, as run does")

    doc = sub.add_parser("doctor", help="check which backends, weights and devices are usable here")
    doc.add_argument("--config", help="YAML config to check (default: config/opentrack.yaml)")
    doc.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    doc.add_argument(
        "--all", action="store_true", help="also list every backend this build knows, not only the configured ones"
    )
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, format="%(levelname)s %(message)s")
    if not args.command:
        parser.print_help()
        return EXIT_INPUT
    handler = {
        "run": cmd_run,
        "eval": cmd_eval,
        "demo": cmd_demo,
        "query": cmd_query,
        "convert": cmd_convert,
        "bench": cmd_bench,
        "doctor": cmd_doctor,
    }[args.command]
    try:
        code = int(handler(args) or 0)
        sys.stdout.flush()  # inside the try: a closed pipe (`| head`) shows up here, not at interpreter exit
        return code
    except (InputError, ConfigError, BackendUnavailable, OpenTrackError) as exc:
        print(f"opentrack {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader of our output went away (`opentrack ... | head`): stop quietly
        _silence_stdout()
        return 141  # 128 + SIGPIPE, as a shell reports a command killed by a closed pipe


def _silence_stdout() -> None:
    """After EPIPE: point stdout at /dev/null so the interpreter's final flush does not raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # a replaced stdout (pytest capture) has no real descriptor
        pass


# ---------------------------------------------------------------------------------------------------------
# config


def parse_sets(items: Sequence[str]) -> Dict[str, object]:
    """["a.b=1", ...] -> {"a.b": 1}; values are YAML scalars (numbers, true/false, lists)."""
    import yaml

    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got '{item}'")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def load_cli_config(config_path: Optional[str], sets: Sequence[str], masks: Optional[str] = None):
    from .config import default_config_path, load_config

    path = config_path
    if path is None and default_config_path().is_file():
        path = default_config_path()
    overrides = parse_sets(sets)
    if masks is not None:
        overrides["masks.source"] = masks
    return load_config(path, overrides)


# ---------------------------------------------------------------------------------------------------------
# run / bench


class RunInterrupted(Exception):
    """run_pipeline(stop=...) was asked to stop: the partial run, finalised (what a whole run returns)."""

    def __init__(self, pipe, instances, seconds, results):
        super().__init__(f"interrupted after {len(results)} frames")
        self.outcome = (pipe, instances, seconds, results)


def run_pipeline(cfg, reader, progress: bool = True, pipeline=None, stop=None):
    """Feed every frame of reader to a Pipeline; returns (pipeline, instances, seconds, per-step results).

    ``stop``: a threading.Event-like flag checked between frames; once set, the frames so far are finalised and
    RunInterrupted carries that partial outcome."""
    from .pipeline import Pipeline

    pipe = pipeline if pipeline is not None else Pipeline(cfg)
    results = []
    t0 = time.perf_counter()
    bar = _progress(len(reader), progress)
    stopped = False
    if cfg.perception.overlap_stages:  # segment / describe / track of consecutive keyframes run concurrently
        from .overlap import run_overlapped

        steps = run_overlapped(pipe, reader, stop_reading=stop)  # on a stop it drains what it has read
    else:
        steps = (pipe.step(frame) for frame in reader)
    for result in steps:
        results.append(result)
        if bar is not None:
            s = pipe.stats
            bar.set_postfix(kf=s.keyframes, tracks=s.active + s.dormant, refresh=False)
            bar.update(1)
        if stop is not None and stop.is_set():
            stopped = True
            if not cfg.perception.overlap_stages:
                break
    steps.close()  # ends the stage threads
    if bar is not None:
        bar.close()
    instances = pipe.finalize(wait_s=2.0) if stopped else pipe.finalize()
    if stopped:
        raise RunInterrupted(pipe, instances, time.perf_counter() - t0, results)
    return pipe, instances, time.perf_counter() - t0, results


class _StopOnSignal:
    """SIGINT / SIGTERM set a flag (the run stops after the current frame and writes its partial results); a
    second signal interrupts at once (KeyboardInterrupt, nothing written). Only in the main thread."""

    def __init__(self):
        import threading

        self.flag = threading.Event()
        self._old = {}

    def __enter__(self):
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: signals keep their default behaviour
            pass
        return self.flag

    def _handle(self, signum, _frame) -> None:
        if self.flag.is_set():
            raise KeyboardInterrupt
        self.flag.set()
        print(
            f"\n{signal.Signals(signum).name}: stopping after this frame and writing the partial results "
            f"(again to abort)",
            file=sys.stderr,
        )

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="frame", file=sys.stderr, dynamic_ncols=True)


def open_reader(args, cfg):
    from .io import open_scene

    if cfg.masks.source == "topic":
        raise ConfigError(
            "masks.source=topic reads masks from the ROS node's masks topic, which the CLI does not "
            "have: use masks.source=model, or dataset (the scene's instance/ PNGs or a bag's masks "
            "topic)"
        )
    with_masks = cfg.masks.source == "dataset"
    return open_scene(args.scene, stride=args.stride, max_frames=args.max_frames, with_masks=with_masks)


def cmd_run(args) -> int:
    from .io.writers import check_output_dir, write_outputs

    cfg = load_cli_config(args.config, args.set, args.masks)
    check_output_dir(args.out)  # before the first frame: a bad --out must not cost the whole run
    reader = open_reader(args, cfg)
    resumed, reader = resume_pipeline(cfg, reader, args.resume, args.start)
    interrupted = False
    with _StopOnSignal() as stop:
        try:
            pipe, instances, seconds, _ = run_pipeline(
                cfg, reader, progress=not args.no_progress, pipeline=resumed, stop=stop
            )
        except RunInterrupted as partial:
            pipe, instances, seconds, _ = partial.outcome
            interrupted = True
        s = pipe.stats
        usable = s.frames - s.dropped.get("bad_frame", 0)
        if usable <= 0 and not interrupted:
            print_summary(pipe, reader, instances, seconds)
            pipe.close() if hasattr(pipe, "close") else None
            print(
                f"opentrack run: error: no frame of '{args.scene}' was usable ({s.frames} passed to the pipeline, "
                f"{sum(dict(getattr(reader, 'dropped', {}) or {}).values())} skipped by the reader): nothing "
                f"written (the first reason of each drop is above)",
                file=sys.stderr,
            )
            return EXIT_NO_FRAMES
        meta = {"scene": str(args.scene), "frames": s.frames, "seconds": round(seconds, 3), "interrupted": interrupted}
        if args.resume:
            meta["resumed_from"] = str(args.resume)
        paths = write_outputs(instances, args.out, pipe.map_points(), meta=meta, view_image=pipe.view_image)
        pipe.save_state(Path(args.out) / "map")
        paths["map_state"] = Path(args.out) / "map"
    print_summary(pipe, reader, instances, seconds, paths)
    pipe.close() if hasattr(pipe, "close") else None
    if interrupted:
        print(f"interrupted after {s.frames} frames: partial results written to {args.out}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def resume_pipeline(cfg, reader, resume: Optional[str], start: Optional[int]):
    """(pipeline or None, reader) for `run --resume DIR [--start N]`: the map state of DIR/map (or DIR) loaded
    into a new Pipeline, and the reader limited to frames with index >= N (default: after the last frame the
    state saw). A bad state raises MapStateError (an InputError: one line, exit 2)."""
    pipe = None
    if resume:
        from .map_state import peek
        from .pipeline import Pipeline

        folder = Path(resume)
        if not folder.exists():
            raise InputError(f"--resume '{folder}' does not exist (expected a run folder or its map/ folder)")
        if not (folder / "state.json").is_file() and (folder / "map").is_dir():
            folder = folder / "map"
        peek(folder)  # a bad state fails here, before any model is loaded
        pipe = Pipeline(cfg)
        try:
            pipe.load_state(folder)
        except Exception:
            pipe.close()
            raise
        if start is None and pipe.last_frame_index >= 0:
            start = pipe.last_frame_index + 1
    if start is not None and start > 0:
        reader = _FramesFrom(reader, int(start))
    return pipe, reader


class _FramesFrom:
    """A scene reader that skips frames with index < start (folder readers: without loading them)."""

    def __init__(self, reader, start: int):
        self.reader, self.start = reader, start
        self.name = getattr(reader, "name", "scene")
        if isinstance(getattr(reader, "indices", None), list):
            reader.indices = [i for i in reader.indices if i >= start]

    @property
    def dropped(self):
        return getattr(self.reader, "dropped", {})

    def __len__(self) -> int:
        return len(self.reader)

    def __iter__(self):
        return (f for f in self.reader if not (isinstance(f.index, (int, np.integer)) and 0 <= f.index < self.start))


def print_summary(pipe, reader, instances, seconds, paths=None) -> None:
    s = pipe.stats
    dropped = Counter(dict(getattr(reader, "dropped", {}) or {}))
    dropped.update(s.dropped)
    fps = s.frames / seconds if seconds > 0 else float("nan")
    print(f"frames      {s.frames} ({fps:.1f} frames/s, {seconds:.1f} s)")
    print(f"keyframes   {s.keyframes}")
    print("dropped     " + (", ".join(f"{k}: {v}" for k, v in sorted(dropped.items())) or "none"))
    first = {**dict(getattr(reader, "first_reasons", {}) or {}), **dict(getattr(s, "first_reasons", {}) or {})}
    for reason in sorted(first):  # without -v too: the first case of each kind, naming its file
        print(f"  first {reason}: {first[reason]}")
    labelled = sum(1 for i in instances if i.label)
    print(
        f"instances   {len(instances)} ({labelled} labelled; tracks active {s.active}, dormant {s.dormant}, "
        f"terminated {s.terminated}, merged {s.merged})"
    )
    if paths:
        print(f"written     {', '.join(str(p) for p in paths.values())}")


def cmd_bench(args) -> int:
    cfg = load_cli_config(args.config, args.set, args.masks)
    cfg.perception.overlap_stages = bool(args.overlap)  # sequential: a stage's time is its cost, not its wait
    reader = open_reader(args, cfg)
    pipe, instances, seconds, results = run_pipeline(cfg, reader, progress=False)
    print_summary(pipe, reader, instances, seconds)
    from . import compiled

    kernels = "compiled (numba)" if compiled.ENABLED else f"numpy ({compiled.UNAVAILABLE})"
    mode = "overlapped (stage times include waits)" if args.overlap else "one after another"
    print(f"stages      {mode}; kernels {kernels}")
    print(stage_table(results))
    return 0


def stage_table(results) -> str:
    """Median and mean milliseconds per stage over keyframes (total over all frames)."""
    stages: Dict[str, List[float]] = {}
    for r in results:
        for k, v in (r.timings_ms or {}).items():
            if r.keyframe or k == "total":
                stages.setdefault(k, []).append(v)
    lines = [f"{'stage':<12}{'median ms':>10}{'mean ms':>10}{'calls':>7}"]
    for k, v in sorted(stages.items(), key=lambda kv: kv[0] == "total"):
        lines.append(f"{k:<12}{np.median(v):>10.2f}{np.mean(v):>10.2f}{len(v):>7}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# eval / query / convert / doctor


def cmd_eval(args) -> int:
    from .eval import evaluate_run

    if not (math.isfinite(args.radius) and args.radius > 0):
        raise InputError(f"--radius {args.radius}: expected a transfer radius > 0 in metres")
    if args.min_size < 0:
        raise InputError(f"--min-size {args.min_size}: expected a point count >= 0")
    result = evaluate_run(args.run_dir, args.gt, radius=args.radius, min_region_size=args.min_size)
    if args.json:  # NaN (a class without GT or predictions) is not JSON: it is written as null
        print(
            json.dumps(
                _json_safe(
                    {
                        "ap": result.ap,
                        "ap50": result.ap50,
                        "ap25": result.ap25,
                        "per_class": result.per_class,
                        "n_gt": result.n_gt,
                        "n_pred": result.n_pred,
                    }
                ),
                indent=1,
                allow_nan=False,
            )
        )
    else:
        print(result.summary())
    return 0


def _json_safe(value):
    """NaN / inf -> None, recursively (numpy scalars become plain numbers)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def cmd_query(args) -> int:
    from .io.writers import read_outputs
    from .query import answer_query

    instances = read_outputs(args.run_dir).to_instances()
    matcher = None
    if not args.no_model:
        try:
            from .config import TextMatcherConfig
            from .perception import registry

            matcher = registry.build("text_matcher", TextMatcherConfig())
        except (OpenTrackError, ImportError, OSError) as exc:
            print(f"(text matcher unavailable: {exc}; using word matching)", file=sys.stderr)
    try:
        matches = answer_query(args.text, instances, text_matcher=matcher)
    except (ImportError, OSError, RuntimeError) as exc:
        if matcher is None:
            raise
        print(f"(text matcher failed: {exc}; using word matching)", file=sys.stderr)
        matches = answer_query(args.text, instances, text_matcher=None)
    if not matches:
        unlabelled = sum(1 for i in instances if not i.label)
        print(f"no instance matches '{args.text}' ({len(instances)} instances, {unlabelled} unlabelled)")
        return 1
    by_id = {i.id: i for i in instances}
    for m in matches[: args.top]:
        inst = by_id.get(m.instance_id)
        c = inst.centroid if inst is not None else np.zeros(3)
        confirmed = "" if m.confirmed is None else ("  confirmed" if m.confirmed else "  rejected")
        print(
            f"id {m.instance_id:<5} {m.label or '-':<20} score {m.score:.3f}  at "
            f"({c[0]:.2f}, {c[1]:.2f}, {c[2]:.2f}){confirmed}"
        )
    return 0


def cmd_convert(args) -> int:
    from .io.rosbag import convert_scene_to_bag

    summary = convert_scene_to_bag(args.scene, args.out, stride=args.stride, max_frames=args.max_frames)
    print(", ".join(f"{k}: {v}" for k, v in (summary or {}).items()) or f"wrote {args.out}")
    return 0


def cmd_doctor(args) -> int:
    from .perception.doctor import run_doctor

    return int(run_doctor(load_cli_config(args.config, args.set), all_backends=args.all))


# ---------------------------------------------------------------------------------------------------------
# demo


DEMO_SETTINGS = {
    "masks.source": "dataset",
    "perception.features.name": "color_hist",
    "perception.labeler.name": "none",
    "keyframes.every_n": 1,
}


def cmd_demo(args) -> int:
    from .eval import evaluate_run
    from .io import open_scene
    from .io.writers import write_outputs
    from .synthetic import MaskNoise, make_room, render_sequence, write_scene_folder

    t0 = time.perf_counter()
    keep = args.out is not None
    root = Path(args.out) if keep else Path(tempfile.mkdtemp(prefix="opentrack_demo_"))
    scene = make_room(seed=args.seed, n_objects=args.objects)
    frames = render_sequence(scene, n_frames=args.frames, seed=args.seed, noise=MaskNoise(seed=args.seed))
    scene_dir = write_scene_folder(scene, frames, root / "scene")
    print(
        f"synthetic room: {len(scene.instance_ids)} objects ({', '.join(sorted(set(scene.labels.values())))}), "
        f"{len(frames)} frames with perturbed 2D masks -> {scene_dir}"
    )
    cfg = load_cli_config(None, [], None)
    from .config import from_flat

    cfg = from_flat(DEMO_SETTINGS, cfg)
    reader = open_scene(scene_dir, with_masks=True)
    pipe, instances, seconds, _ = run_pipeline(cfg, reader, progress=False)
    write_outputs(instances, root / "run", pipe.map_points(), view_image=pipe.view_image)
    result = evaluate_run(root / "run", scene_dir)
    print_summary(pipe, reader, instances, seconds)
    print(
        f"result      {len(instances)} instances found for {len(scene.instance_ids)} objects: "
        f"AP {result.ap:.3f}  AP50 {result.ap50:.3f}  AP25 {result.ap25:.3f}"
    )
    if keep:
        print(f"outputs     {root / 'run'} (try: opentrack eval {root / 'run'} --gt {scene_dir})")
    else:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    print(f"demo done in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
