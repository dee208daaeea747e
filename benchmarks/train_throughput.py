"""Training throughput of `clipsr train` on Ray Train: images/s per step, data-wait share, MFU,
and the scaling of 2 workers against 1 measured in the same run.

For each preset (tiny, base) and worker count (1, 2): a short run of the real job (Ray Train,
DDP, DataLoader over WebDataset shards, EMA, embedded MLflow) on shards of the bundled
photographs; the figures are the workers' own measurements over the second half of the run
(the first half absorbs start-up). "of linear" is images/s with N workers / (N x images/s with
one worker), both from this run. Model FLOPs per step are counted once with
``torch.utils.flop_counter`` on one training step; MFU = FLOPs/step x steps/s / peak.
``--profile N``: where the seconds of one worker's step go (``train_step`` on this process's
device, N steps, synchronised per part on a GPU). The load average is printed with the table.

    python benchmarks/train_throughput.py                         # CPU: tiny and base, 1 vs 2
    python benchmarks/train_throughput.py --presets tiny --repeat 3   # 1 vs 2 workers, 3 times
    # one GPU, base preset, bf16 autocast (H100/H200 dense bf16 peak: 989 TFLOP/s):
    python benchmarks/train_throughput.py --gpu --presets base --workers 1 \
        --peak-tflops 989 --profile 10
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path
from statistics import median

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.* next to clipsr

ROOT = Path(__file__).resolve().parents[1]


def make_shards(tmp: Path, hr_size: int, count: int = 48) -> Path:
    from PIL import Image

    from pipelines.bundled_photos import bundled_photos
    from pipelines.preprocess import run_preprocess
    from pipelines.preprocess_config import load_preprocess_config

    corpus = tmp / f"corpus{hr_size}"
    corpus.mkdir()
    rng = np.random.default_rng(0)
    photos = bundled_photos("train") + bundled_photos("test")
    for i in range(count):
        p = photos[i % len(photos)]
        h, w, _ = p.image.shape
        side = int(rng.integers(min(h, w) // 2, min(h, w) + 1))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        Image.fromarray(p.image[y : y + side, x : x + side]).save(corpus / f"c{i:03d}.jpg")
        (corpus / f"c{i:03d}.txt").write_text(p.caption + "\n")
    out = tmp / f"shards{hr_size}"
    run_preprocess(
        load_preprocess_config(
            None,
            [
                "source.kind=folder",
                f"source.path={corpus}",
                f"output={out}",
                f"hr_size={hr_size}",
                "scales=[4]",
                "samples_per_shard=8",
                "test_fraction=0.1",
            ],
        ),
        progress=False,
    )
    return out


def flops_per_step(cfg, batch: int) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from clipsr.training import build_models, build_optimizers, train_step

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models = build_models(cfg)
    opts = build_optimizers(models, cfg.optim)
    hr = torch.rand(batch, 3, cfg.model.hr_size, cfg.model.hr_size) * 2 - 1
    lr = torch.nn.functional.interpolate(hr, size=cfg.model.lr_size, mode="area")
    text = models.clip.encode_text(["a photograph"] * batch)
    with FlopCounterMode(display=False) as counter:
        train_step(models, opts, lr, hr, text, cfg.loss.weights)
    return float(counter.get_total_flops())


def profile_step(cfg, batch: int, gpu: bool, rounds: int) -> None:
    """Where the seconds of one training step go (as one worker runs it, without DDP)."""
    import time

    import torch

    from benchmarks.step_profile import StepProfile, instrumented, print_profile
    from clipsr.training import Precision, build_models, build_optimizers, train_step

    device = torch.device("cuda" if gpu else "cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models = build_models(cfg).to(device)
    opts = build_optimizers(models, cfg.optim)
    precision = Precision.create(cfg.run.precision, device)
    hr = torch.rand(batch, 3, cfg.model.hr_size, cfg.model.hr_size, device=device) * 2 - 1
    lr = torch.nn.functional.interpolate(hr, size=cfg.model.lr_size, mode="area")
    captions = [f"a photograph number {i}" for i in range(batch)]

    def step():
        text = models.clip.encode_text(captions)
        train_step(models, opts, lr, hr, text, cfg.loss.weights, precision)

    def clock() -> float:
        if gpu:
            torch.cuda.synchronize()
        return time.perf_counter()

    step()  # warm-up (allocator, kernels)
    profile = StepProfile(clock)
    with instrumented(models, opts, profile):
        parts = profile.measure(step, rounds)
    print_profile(
        f"{cfg.run.name}: one step on {device} ({cfg.run.precision}), batch {batch}", parts
    )


def run(
    preset: str, workers: int, shards: Path, tmp: Path, steps: int, batch: int, gpu: bool, tag=0
):
    from jobs.train import run_train
    from jobs.train_config import load_train_config

    overrides = [
        f"data.shards={shards}",
        f"run.storage_path={tmp / 'runs'}",
        f"run.name={preset}-{workers}w-{tag}",
        f"run.steps={steps}",
        f"run.num_workers={workers}",
        f"data.batch_size={batch}",
        "data.loader_workers=1",
        f"run.log_every={steps // 2}",
        f"run.checkpoint_every={steps}",
        f"run.validate_every={10 * steps}",
        "tracking.system_metrics=false",
        "tracking.registered_model=",
        f"run.cpus_per_worker={1 if not gpu else 4}",
    ]
    if preset == "base":
        overrides += ["loss.vgg16_weights=random"]
    if gpu:
        overrides += ["run.use_gpu=true", "run.precision=bf16"]
    else:  # the base presets are set up for GPU clusters
        overrides += ["run.use_gpu=false", "run.precision=fp32"]
    cfg = load_train_config(ROOT / "configs" / "train" / f"{preset}-x4.yaml", overrides)
    return cfg, run_train(cfg).metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "base"])
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--batch", type=int, default=4, help="per worker")
    parser.add_argument("--repeat", type=int, default=1, help="runs per worker count, alternated")
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="per device, for MFU")
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # each table as soon as it is measured
    import ray

    from pipelines.ray_cluster import init_ray

    init_ray("", include_dashboard=False, log_to_driver=False)
    rows = []
    with tempfile.TemporaryDirectory(prefix="clipsr-train-bench-") as tmp:
        tmp = Path(tmp)
        shards = {}
        for preset in args.presets:
            hr = 128 if preset == "tiny" else 256
            shards[hr] = shards.get(hr) or make_shards(tmp, hr)
            steps = 40 if preset == "tiny" and not args.gpu else (40 if args.gpu else 4)
            runs: dict[int, list[dict]] = {w: [] for w in args.workers}
            for attempt in range(args.repeat):
                for workers in args.workers:
                    cfg, m = run(
                        preset, workers, shards[hr], tmp, steps, args.batch, args.gpu, attempt
                    )
                    runs[workers].append(m)
                    print(f"{preset} x{workers}: {m['perf/images_per_s']:.2f} img/s", flush=True)
            flops = flops_per_step(cfg, args.batch)
            rows.append((preset, runs, flops))
            if args.profile:
                profile_step(cfg, args.batch, args.gpu, args.profile)
    ray.shutdown()
    device = "GPU (bf16 autocast)" if args.gpu else "CPU (fp32)"
    print(f"\n{device}, batch {args.batch} per worker, 4x; {load()}")
    print(
        "| preset | workers | images/s (median, min-max) | of linear | steps/s | data wait | "
        "GFLOP/step/worker | MFU |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for preset, runs, flops in rows:
        one = median([m["perf/images_per_s"] for m in runs.get(1, [])] or [0.0])
        for workers, ms in runs.items():
            ips = [m["perf/images_per_s"] for m in ms]
            sps = median([m["perf/steps_per_s"] for m in ms])
            linear = f"{median(ips) / (workers * one):.2f}x" if one and workers > 1 else "-"
            mfu = f"{flops * sps / (args.peak_tflops * 1e12):.1%}" if args.peak_tflops else "-"
            wait = median([m["perf/data_wait_share"] for m in ms])
            print(
                f"| {preset} | {workers} | {median(ips):.2f} ({min(ips):.2f}-{max(ips):.2f}) | "
                f"{linear} | {sps:.3f} | {wait:.1%} | {flops / 1e9:.1f} | {mfu} |"
            )


def load() -> str:
    return "load avg " + " ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
