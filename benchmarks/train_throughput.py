"""Training throughput of `clipsr train` on Ray Train: images/s per step, data-wait share, MFU.

For each preset (tiny, base) and worker count (1, 2): a short run of the real job (Ray Train,
DDP, DataLoader over WebDataset shards, EMA, embedded MLflow) on shards of the bundled
photographs; the figures are the workers' own measurements over the second half of the run
(the first half absorbs start-up). Model FLOPs per step are counted once with
``torch.utils.flop_counter`` on one training step; MFU = FLOPs/step x steps/s / peak.

    python benchmarks/train_throughput.py                         # CPU: tiny and base, 1 vs 2
    python benchmarks/train_throughput.py --gpu --peak-tflops 989 # one GPU per worker, bf16
"""

from __future__ import annotations

import argparse
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

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


def run(preset: str, workers: int, shards: Path, tmp: Path, steps: int, batch: int, gpu: bool):
    from jobs.train import run_train
    from jobs.train_config import load_train_config

    overrides = [
        f"data.shards={shards}",
        f"run.storage_path={tmp / 'runs'}",
        f"run.name={preset}-{workers}w",
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
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="per device, for MFU")
    args = parser.parse_args()
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
            for workers in args.workers:
                cfg, m = run(preset, workers, shards[hr], tmp, steps, args.batch, args.gpu)
                flops = flops_per_step(cfg, args.batch)
                rows.append((preset, workers, m, flops))
                print(f"{preset} x{workers}: {m['perf/images_per_s']:.2f} img/s", flush=True)
    device = "GPU (bf16 autocast)" if args.gpu else "CPU (fp32)"
    print(f"\n{device}, batch {args.batch} per worker, 4x")
    print("| preset | workers | images/s | steps/s | data wait | GFLOP/step/worker | MFU |")
    print("|---|---|---|---|---|---|---|")
    for preset, workers, m, flops in rows:
        achieved = flops * m["perf/steps_per_s"]
        mfu = f"{achieved / (args.peak_tflops * 1e12):.1%}" if args.peak_tflops else "-"
        print(
            f"| {preset} | {workers} | {m['perf/images_per_s']:.2f} | "
            f"{m['perf/steps_per_s']:.3f} | {m['perf/data_wait_share']:.1%} | "
            f"{flops / 1e9:.1f} | {mfu} |"
        )


if __name__ == "__main__":
    main()
