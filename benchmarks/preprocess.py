"""Throughput and memory of the Ray Data preprocessing job against a plain loop, same run.

Builds folder corpora of real photographs (scikit-image's, as random 480-800 px JPEG crops with
captions) of S and 4 S samples, then runs, in fresh processes, round after round (interleaved,
so that load on a shared machine hits every arm alike):

- loop: one process calls the same per-shard function (read, decode, crop, degrade x3, encode,
  write tar/parquet/stats) shard after shard: samples/s on one core, at S and at 4 S; at S also
  with PNG level 6 (the encoder's default before ``png_compression``), to show what level 1 buys;
- ray: ``run_preprocess`` with N writers (N = cores) on a local Ray started the way the job
  starts it: samples/s / N per core, timed from the job's start (after Ray is up; the start-up
  is printed beside it) to its manifest;
- the CPU seconds of each arm's whole process tree (driver, Ray's daemons and workers): the
  loop's CPU seconds over the job's, a ratio that a busy shared host disturbs less than wall
  time;
- peak memory: the summed RSS of the Ray job's whole process tree, at S and 4 S.

Goals (issue 16): the Ray job >= 0.85x of the loop per core at 1,000 samples and >= 0.95x at
4,000; peak memory flat (< +20% for 4x the corpus). The load average is printed with the table.

    python benchmarks/preprocess.py                      # S = 1,000 and 4 S = 4,000
    python benchmarks/preprocess.py --samples 200 --repeat 3
    python benchmarks/preprocess.py --planning 100000 1000000 4000000

``--planning``: the driver's peak RSS, planning rate and time to the first shard task at
those manifest sizes (``benchmarks/preprocess_planning.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]

LOOP = """
import json, sys, time
from pipelines.preprocess_plan import plan_preprocess, plan_uri, read_shard_plan, write_plan_files
from pipelines.preprocess_config import load_preprocess_config
from pipelines.shard_writer import write_shard
cfg = load_preprocess_config(sys.argv[1], sys.argv[2:])
start = time.time()
plan = plan_preprocess(cfg)
write_plan_files(plan, cfg, {s.name for s in plan.shards})
plans = (read_shard_plan(plan_uri(cfg.output, s.name), s.name, s.split, cfg) for s in plan.shards)
n = sum(write_shard(p, cfg)["samples_in"] for p in plans)
print(json.dumps({"samples": n, "seconds": time.time() - start}))
"""

RAY = """
import json, sys, time
from pipelines.preprocess import _init_ray, run_preprocess
from pipelines.preprocess_config import load_preprocess_config
cfg = load_preprocess_config(sys.argv[1], sys.argv[2:])
start = time.time()
_init_ray(cfg)  # the job's own start-up of a local Ray
init = time.time() - start
s = run_preprocess(cfg, progress=False)
from pathlib import Path
stats = Path(cfg.output).glob("*_stats.json")
busy = sum(json.loads(p.read_text())["duration_s"] for p in stats)
print(json.dumps({"samples": s.samples_in, "seconds": s.seconds, "busy": busy, "init": init}))
"""


def make_corpus(root: Path, count: int, seed: int = 0) -> None:
    from PIL import Image

    from pipelines.bundled_photos import bundled_photos

    photos = bundled_photos("train") + bundled_photos("test")
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w, _ = photo.image.shape
        side = int(rng.integers(min(h, w) // 2, min(h, w) + 1))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = Image.fromarray(photo.image[y : y + side, x : x + side])
        crop = crop.resize((int(rng.integers(480, 801)),) * 2, Image.BICUBIC)
        crop.save(root / f"img{i:06d}.jpg", quality=90)
        (root / f"img{i:06d}.txt").write_text(f"{photo.caption}\nsample {i}\n")


def kind(proc: psutil.Process, root: psutil.Process) -> str:
    """Which part of a Ray job a process is: the driver, a worker (tasks; idle), one of Ray
    Data's actors, or one of Ray's daemons."""
    if proc.pid == root.pid:
        return "driver"
    cmdline = proc.cmdline() or [""]
    if cmdline[0].startswith("ray::_"):
        return "Ray Data actors"
    if cmdline[0].startswith("ray::") or any("default_worker.py" in a for a in cmdline):
        return "workers"
    return "Ray daemons"


def run(code: str, args: list[str]) -> dict:
    """Run ``code`` in a fresh process; its JSON result plus the peak RSS (MiB) and the CPU
    seconds of its whole process tree (in all and by kind of process), sampled every 0.1 s."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    peak, cpu, kinds = 0.0, {}, {}
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        rss = 0
        for p in procs:
            try:
                times, mem = p.cpu_times(), p.memory_info()
                now = kind(p, root)  # a worker's title changes, and empties as it exits
                kinds[p.pid] = kinds.get(p.pid, now) if now == "Ray daemons" else now
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            cpu[p.pid] = times.user + times.system
            rss += mem.rss
        peak = max(peak, rss)
        time.sleep(0.1)
    out = proc.stdout.read()
    if proc.returncode:
        raise RuntimeError(f"benchmark child failed ({proc.returncode}): {out[-2000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    by_kind: dict[str, float] = {}
    for pid, seconds in cpu.items():
        by_kind[kinds[pid]] = by_kind.get(kinds[pid], 0.0) + seconds
    return {**result, "peak_mib": peak / 2**20, "cpu_s": sum(cpu.values()), "cpu_by_kind": by_kind}


def write_config(path: Path, corpus: Path, output: Path, per_shard: int) -> None:
    path.write_text(
        f"source: {{kind: folder, path: '{corpus}'}}\noutput: '{output}'\nhr_size: 256\n"
        f"scales: [4, 8, 16]\nsamples_per_shard: {per_shard}\ntest_fraction: 0.0\n"
    )


def load() -> str:
    return "load avg " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def med(results: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=1000, help="small corpus size S")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--per-shard", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=1, help="interleaved rounds")
    parser.add_argument("--planning", type=int, nargs="+", metavar="N", help="planning case")
    args = parser.parse_args()
    if args.planning:
        import preprocess_planning as planning  # (a module-level name: ``run`` here is ours)

        with tempfile.TemporaryDirectory(prefix="clipsr-plan-bench-") as tmp:
            planning.report(planning.run(sorted(args.planning), 1000, Path(tmp), timeout_s=3600))
        return
    sys.stdout.reconfigure(line_buffering=True)
    sizes = {"S": args.samples, "4S": 4 * args.samples}
    arms: dict[str, list[dict]] = {}
    print(f"start: {load()}")
    with tempfile.TemporaryDirectory(prefix="clipsr-bench-") as tmp:
        tmp = Path(tmp)
        for name, count in sizes.items():
            make_corpus(tmp / name, count)
            write_config(tmp / f"{name}.yaml", tmp / name, tmp / f"out-{name}", args.per_shard)
        for rnd in range(args.repeat):
            for name in sizes:
                cfg = str(tmp / f"{name}.yaml")
                out = f"output={tmp / f'out-{rnd}'}"
                steps = [(f"loop {name}", LOOP, [cfg, f"{out}-loop-{name}"])]
                if name == "S":
                    steps.append(("loop S png6", LOOP, [cfg, f"{out}-png6", "png_compression=6"]))
                ray_args = [cfg, f"{out}-ray-{name}", f"concurrency={args.workers}"]
                steps.append((f"ray {name}", RAY, ray_args))
                for arm, code, run_args in steps:
                    arms.setdefault(arm, []).append(run(code, run_args))
                    print(f"  round {rnd + 1} {arm}: done, {load()}")
    print("\ncorpus: real photographs, 480-800 px JPEG -> 256 px HR + LR x4/x8/x16 (area)")
    print(f"{args.workers} writers, {args.per_shard} samples per shard, {load()}")
    print(
        "| corpus | loop, samples/s (1 core) | ray job, samples/s per core | ray / loop "
        "(min-max) | CPU s: loop / ray | ray start-up s | ray peak RSS MiB |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, count in sizes.items():
        loops, rays = arms[f"loop {name}"], arms[f"ray {name}"]
        loop_rates = [r["samples"] / r["seconds"] for r in loops]
        ray_rates = [r["samples"] / r["seconds"] / args.workers for r in rays]
        paired = [r / lp for r, lp in zip(ray_rates, loop_rates)]
        cpu = statistics.median(lp["cpu_s"] / r["cpu_s"] for lp, r in zip(loops, rays))
        print(
            f"| {name} = {count} | {statistics.median(loop_rates):.1f} | "
            f"{statistics.median(ray_rates):.1f} | {statistics.median(paired):.2f} "
            f"({min(paired):.2f}-{max(paired):.2f}) | {cpu:.2f} | {med(rays, 'init'):.1f} | "
            f"{med(rays, 'peak_mib'):.0f} |"
        )
    print("\nCPU s of the ray job's process tree by kind (median; the loop's whole process):")
    for name in sizes:
        rays = arms[f"ray {name}"]
        parts = sorted({k for r in rays for k in r["cpu_by_kind"]})
        split = ", ".join(
            f"{k} {statistics.median(r['cpu_by_kind'].get(k, 0.0) for r in rays):.1f}"
            for k in parts
        )
        print(f"  {name}: {split}; loop {med(arms[f'loop {name}'], 'cpu_s'):.1f}")
    png6 = [r["samples"] / r["seconds"] for r in arms["loop S png6"]]
    png1 = [r["samples"] / r["seconds"] for r in arms["loop S"]]
    print(
        f"\nloop at PNG level 1 (the default) / level 6: "
        f"{statistics.median(a / b for a, b in zip(png1, png6)):.2f}x "
        f"({statistics.median(png1):.1f} vs {statistics.median(png6):.1f} samples/s)"
    )
    growth = med(arms["ray 4S"], "peak_mib") / med(arms["ray S"], "peak_mib") - 1
    print(f"peak memory growth for 4x the corpus: {growth:+.1%}")
    print("goals: ray / loop >= 0.85 at 1,000 samples, >= 0.95 at 4,000; memory growth < +20%")


if __name__ == "__main__":
    main()
