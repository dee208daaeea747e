"""Throughput and memory of the Ray Data preprocessing job against a plain loop.

Builds a folder corpus of real photographs (scikit-image's, as random 480-800 px JPEG crops with
captions), then, in fresh processes:

- loop: one process calls the same per-shard function (read, decode, crop, degrade x3, encode,
  write tar/parquet/stats) shard after shard: samples/s on one core;
- ray: ``run_preprocess`` on a local Ray with N workers (N = cores): samples/s / N per core,
  measured from the job's start (after ``ray.init``) to its manifest;
- peak memory: the summed RSS of the Ray job's whole process tree (driver, raylet, workers)
  sampled every 0.2 s, at corpus size S and 4 S.

Targets (issue): Ray per-core throughput >= 80% of the loop's; peak memory grows < 20% for 4x
the corpus.

    python benchmarks/preprocess.py --samples 200
    python benchmarks/preprocess.py --planning 100000 1000000 4000000

``--planning``: the driver's peak RSS, planning rate and time to the first shard task at
those manifest sizes (``benchmarks/preprocess_planning.py``).
"""

from __future__ import annotations

import argparse
import json
import os
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
import json, sys
from pipelines.ray_cluster import init_ray
init_ray("", num_cpus=int(sys.argv[3]), include_dashboard=False, log_to_driver=False,
         runtime_env={"env_vars": {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}})
from pipelines.preprocess import run_preprocess
from pipelines.preprocess_config import load_preprocess_config
cfg = load_preprocess_config(sys.argv[1], [sys.argv[2], f"concurrency={sys.argv[3]}"])
s = run_preprocess(cfg, progress=False)
from pathlib import Path
stats = Path(cfg.output).glob("*_stats.json")
busy = sum(json.loads(p.read_text())["duration_s"] for p in stats)
print(json.dumps({"samples": s.samples_in, "seconds": s.seconds, "busy": busy}))
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


def run(code: str, args: list[str], sample_memory: bool = False) -> tuple[dict, float]:
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
    peak = 0.0
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        if sample_memory:
            try:
                procs = [root, *root.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in procs if p.is_running()))
            except psutil.NoSuchProcess:
                pass
        time.sleep(0.2)
    out = proc.stdout.read()
    if proc.returncode:
        raise RuntimeError(f"benchmark child failed ({proc.returncode}): {out[-2000:]}")
    return json.loads(out.strip().splitlines()[-1]), peak / 2**20


def write_config(path: Path, corpus: Path, output: Path, per_shard: int) -> None:
    path.write_text(
        f"source: {{kind: folder, path: '{corpus}'}}\noutput: '{output}'\nhr_size: 256\n"
        f"scales: [4, 8, 16]\nsamples_per_shard: {per_shard}\ntest_fraction: 0.0\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=1000, help="small corpus size S")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--per-shard", type=int, default=50)
    parser.add_argument("--planning", type=int, nargs="+", metavar="N", help="planning case")
    args = parser.parse_args()
    if args.planning:
        from preprocess_planning import report, run

        with tempfile.TemporaryDirectory(prefix="clipsr-plan-bench-") as tmp:
            report(run(sorted(args.planning), 1000, Path(tmp), timeout_s=3600))
        return
    with tempfile.TemporaryDirectory(prefix="clipsr-bench-") as tmp:
        tmp = Path(tmp)
        small, large = tmp / "small", tmp / "large"
        make_corpus(small, args.samples)
        make_corpus(large, 4 * args.samples)
        cfg = tmp / "small.yaml"
        write_config(cfg, small, tmp / "out-loop", args.per_shard)
        loop, _ = run(LOOP, [str(cfg)])
        results = {}
        for name, corpus in (("S", small), ("4S", large)):
            cfg = tmp / f"{name}.yaml"
            write_config(cfg, corpus, tmp / f"out-{name}", args.per_shard)
            results[name] = run(
                RAY,
                [str(cfg), f"output={tmp / f'out-ray-{name}'}", str(args.workers)],
                sample_memory=True,
            )
    loop_rate = loop["samples"] / loop["seconds"]
    ray_s, mem_s = results["S"]
    ray_l, mem_l = results["4S"]
    per_core = {k: v[0]["samples"] / v[0]["seconds"] / args.workers for k, v in results.items()}
    print("corpus: real photographs, 480-800 px JPEG -> 256 px HR + LR x4/x8/x16 (bicubic)")
    print(f"plain loop, 1 process, {args.samples} samples: {loop_rate:.1f} samples/s per core")
    for key, (res, mem) in results.items():
        print(
            f"ray job, {args.workers} workers, {res['samples']} samples: "
            f"{res['samples'] / res['seconds']:.1f} samples/s = {per_core[key]:.1f} per core "
            f"(inside the shard tasks: {res['samples'] / res['busy']:.1f} per core); "
            f"peak RSS (whole process tree) {mem:.0f} MiB"
        )
    print(
        f"\nper-core throughput, ray / loop: S {per_core['S'] / loop_rate:.2f}, "
        f"4S {per_core['4S'] / loop_rate:.2f}  (target >= 0.80)"
    )
    print(f"peak memory growth for 4x the corpus: {mem_l / mem_s - 1:+.1%}  (target < +20%)")


if __name__ == "__main__":
    main()
