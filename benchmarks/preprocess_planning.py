"""The planning case of ``benchmarks/preprocess.py``: driver memory and time to the first task.

For each corpus size N (manifest entries; a JSONL manifest whose rows repeat a few real image
files, each with its own caption), a fresh process runs the real job (``run_preprocess`` on a
local Ray) and is stopped as soon as the first shard task starts on a worker. Measured:

- driver peak RSS: the job's own process (not Ray's raylet or workers), sampled every 0.1 s;
- planning rate: N / (listing + sorting + writing the per-shard plan files), per second of
  wall time and per second of the driver's CPU time (what it would be on an idle core);
- time to the first shard task: from the job's start (before Ray starts) until a shard task
  runs on a worker.

Goal (issue 13): peak RSS at the largest N within 1.5x of the smallest; planning >= 100k
entries/s.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, time
events = sys.argv[2]

def note(event):
    with open(events, "a") as f:
        f.write(json.dumps({"event": event, "t": time.time(), "cpu": time.process_time()}) + "\\n")

note("start")
from pipelines import preprocess
from pipelines.preprocess_config import load_preprocess_config

plan, write = preprocess.plan_preprocess, preprocess.write_plan_files
write_shards = preprocess._write_shards

def planned(cfg):
    note("plan_start")
    return plan(cfg)

def written(*args):
    write(*args)
    note("plans_written")

def first_task(row, cfg_dict):  # shipped by value: runs on a Ray worker
    note("first_task")
    return write_shards(row, cfg_dict)

preprocess.plan_preprocess, preprocess.write_plan_files = planned, written
preprocess._write_shards = first_task
preprocess.run_preprocess(load_preprocess_config(sys.argv[1]), progress=False)
"""


def write_corpus(root: Path, entries: int, files: int = 8) -> Path:
    from PIL import Image

    from pipelines.bundled_photos import bundled_photos

    root.mkdir(parents=True, exist_ok=True)
    photos = bundled_photos("train")[:files]
    for i, photo in enumerate(photos):
        Image.fromarray(photo.image[:256, :256]).save(root / f"img{i}.png")
    manifest = root / f"manifest-{entries}.jsonl"
    with manifest.open("w") as f:
        chunk = []
        for i in range(entries):
            chunk.append(f'{{"image": "img{i % len(photos)}.png", "caption": "photo {i}"}}\n')
            if len(chunk) == 100_000:
                f.writelines(chunk)
                chunk.clear()
        f.writelines(chunk)
    return manifest


def kill_tree(pid: int) -> None:
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)
    psutil.wait_procs(procs, timeout=30)


def measure(manifest: Path, work: Path, per_shard: int, timeout_s: float) -> dict:
    """One job on ``manifest``, stopped at its first shard task."""
    cfg = work / "cfg.yaml"
    cfg.write_text(
        f"source: {{kind: manifest, path: '{manifest}'}}\noutput: '{work / 'out'}'\n"
        f"hr_size: 64\nscales: [4]\nsamples_per_shard: {per_shard}\nconcurrency: 1\n"
    )
    events = work / "events.jsonl"
    events.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(cfg), str(events)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    driver, peak = psutil.Process(proc.pid), 0
    seen: dict[str, dict] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while "first_task" not in seen:
            if proc.poll() is not None:
                raise RuntimeError(f"the job exited early: {proc.stderr.read().decode()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no shard task within {timeout_s:.0f}s")
            with contextlib.suppress(psutil.NoSuchProcess):
                peak = max(peak, driver.memory_info().rss)
            if events.exists():
                for line in events.read_text().splitlines():
                    record = json.loads(line)
                    seen.setdefault(record["event"], record)
            time.sleep(0.1)
    finally:
        kill_tree(proc.pid)
    entries = int(manifest.stem.rsplit("-", 1)[1])
    planning = seen["plans_written"]["t"] - seen["plan_start"]["t"]
    cpu = seen["plans_written"]["cpu"] - seen["plan_start"]["cpu"]
    return {
        "entries": entries,
        "peak_rss_mib": peak / 2**20,
        "planning_s": planning,
        "entries_per_s": entries / planning,
        "entries_per_cpu_s": entries / cpu,
        "first_task_s": seen["first_task"]["t"] - seen["start"]["t"],
    }


def run(sizes: list[int], per_shard: int, work: Path, timeout_s: float) -> list[dict]:
    rows = []
    for entries in sizes:
        manifest = write_corpus(work / "corpus", entries)
        job = work / f"job-{entries}"
        job.mkdir(parents=True, exist_ok=True)
        rows.append(measure(manifest, job, per_shard, timeout_s))
        manifest.unlink()
        subprocess.run(["rm", "-rf", str(job)], check=False)
        r = rows[-1]
        print(
            f"{r['entries']:>9,} entries: driver peak RSS {r['peak_rss_mib']:.0f} MiB, planning "
            f"{r['planning_s']:.1f}s = {r['entries_per_s']:,.0f} entries/s (per CPU second of the "
            f"driver: {r['entries_per_cpu_s']:,.0f}), first shard task "
            f"after {r['first_task_s']:.1f}s  (load {os.getloadavg()[0]:.1f})",
            flush=True,
        )
    return rows


def report(rows: list[dict]) -> None:
    small, large = rows[0], rows[-1]
    ratio = large["peak_rss_mib"] / small["peak_rss_mib"]
    slowest = min(r["entries_per_s"] for r in rows)
    print(
        f"\ndriver peak RSS at {large['entries']:,} / at {small['entries']:,}: {ratio:.2f}x "
        f"(goal <= 1.5x); slowest planning {slowest:,.0f} entries/s (goal >= 100,000)"
    )
