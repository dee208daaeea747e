"""``clipsr upscale``: super-resolve LR images with a model, guided by prompts or their captions.

    clipsr upscale --model models:/clipsr@champion --prompt "a red bird" lr1.png lr2.png --out sr/
    clipsr upscale --model runs/x/checkpoint --input-dir lr/ --out s3://bucket/sr --prompt "a bird"
    clipsr upscale --model models:/clipsr/3 --shards s3://bucket/shards --split test \\
        --out s3://bucket/sr-shards --out-format shards

Single files run in this process; with several ``--prompt`` each image is upscaled once per
prompt and a grid (LR, then each SR labelled with its prompt and CLIP-score) is written too.
``--input-dir`` (images, captions from same-stem .txt files, else ``--prompt``) and ``--shards``
(a ``clipsr preprocess`` output) run on Ray Data (``pipelines/batch_upscale.py``); skipped inputs
are listed in ``<out>/skipped.jsonl``. Exit code: 0, 1 when inputs were skipped, 2 on bad config.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

from jobs import console

log = logging.getLogger("clipsr.upscale")
PROG = "clipsr upscale"


def build_parser() -> argparse.ArgumentParser:
    p = console.Parser(
        prog=PROG,
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("inputs", nargs="*", metavar="IN", help="low-resolution image files")
    p.add_argument("--model", help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/..., or DIR")
    p.add_argument("--checkpoint", metavar="DIR", help="a local checkpoint directory (= --model)")
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking/registry URI (else MLFLOW_TRACKING_URI, else ./runs/mlflow.db)",
    )
    p.add_argument(
        "--prompt",
        action="append",
        help="caption guiding the upscale; repeat for a prompt-editing grid (single files); "
        "in batch mode the caption of inputs that have none",
    )
    p.add_argument("--scale", type=int, help="upscale factor (default: the model's)")
    p.add_argument("--out", required=True, help="output directory (batch mode: also s3://)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")
    batch = p.add_argument_group("batch mode (Ray Data)")
    batch.add_argument("--input-dir", help="a folder of images (local or s3://)")
    batch.add_argument("--shards", help="a clipsr preprocess output directory (local or s3://)")
    batch.add_argument("--split", default="test", help="the shard split to upscale (test)")
    batch.add_argument(
        "--out-format",
        choices=("files", "shards"),
        default="files",
        help="PNG files (default) or new WebDataset shards",
    )
    batch.add_argument("--endpoint-url", help="S3 endpoint (else AWS_ENDPOINT_URL)")
    batch.add_argument("--gpu", action="store_true", default=None, help="one GPU per actor")
    batch.add_argument(
        "--concurrency", type=int, help="Ray actors (default: 1 up to the GPUs or CPUs/2)"
    )
    batch.add_argument("--workers", type=int, help=argparse.SUPPRESS)  # the old --concurrency
    batch.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    batch.add_argument("--local", action="store_true", help="run in this process, no Ray")
    batch.add_argument(
        "--shared-filesystem",
        action="store_true",
        help="local paths are mounted at the same place on every Ray node (checked)",
    )
    return p


def _slug(index: int, prompt: str) -> str:
    words = "".join(c if c.isalnum() else "-" for c in prompt.lower()).strip("-")
    return f"p{index}-{words[:40].strip('-') or 'empty'}"


def _fail(message: str) -> int:
    return console.fail(PROG, message, 2)


def run_files(args: argparse.Namespace) -> int:
    """Single files in this process (as before), the model from a directory or the registry."""
    from PIL import Image, UnidentifiedImageError

    from clipsr.checkpoint import CheckpointError
    from clipsr.inference import prompt_grid
    from jobs.tracking import ModelNotFound, TrackingUnavailable, check_tracking_uri, load_resolver

    try:
        if args.model.startswith(("models:", "runs:")) and args.tracking_uri:
            check_tracking_uri(args.tracking_uri)
        resolver = load_resolver(args.model, args.device, tracking_uri=args.tracking_uri)
    except (CheckpointError, ModelNotFound, TrackingUnavailable) as err:
        return _fail(str(err))
    if args.scale is not None and args.scale != resolver.scale:
        return _fail(
            f"--scale {args.scale} but {args.model} is a {resolver.scale}x model; "
            f"pass --scale {resolver.scale} or another model"
        )
    out = Path(args.out)
    failed = 0
    for name in args.inputs:
        path = Path(name)
        try:
            with Image.open(path) as img:
                lr = img.convert("RGB")
            resolver.check_size(*lr.size, name=str(path))
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as err:
            print(f"{PROG}: skipped {path}: {console.one_line(err)}", file=sys.stderr)
            failed += 1
            continue
        out.mkdir(parents=True, exist_ok=True)  # checked before the model was loaded
        stem = f"{path.stem}_x{resolver.scale}"
        results, scores = resolver.prompt_edit(lr, args.prompt)
        if len(args.prompt) == 1:
            results[0].save(out / f"{stem}.png")
            written = [out / f"{stem}.png"]
        else:
            written = []
            for k, (img, prompt) in enumerate(zip(results, args.prompt)):
                written.append(out / f"{stem}_{_slug(k, prompt)}.png")
                img.save(written[-1])
            grid_path = out / f"{stem}_prompts.png"
            prompt_grid(lr, results, args.prompt, scores).save(grid_path)
            written.append(grid_path)
        report = {
            "model": args.model,
            "clip_weights": resolver.clip.weights_description,  # the CLIP-scores' meaning
            "results": [{"prompt": p, "clip_score": s} for p, s in zip(args.prompt, scores)],
        }
        (out / f"{stem}.json").write_text(json.dumps(report, indent=2))
        print(f"{path} -> {', '.join(str(w) for w in written)}")
    if failed and len(args.inputs) > 1:
        print(f"{PROG}: {failed} of {len(args.inputs)} inputs skipped", file=sys.stderr)
    return 1 if failed else 0


def run_batch(args: argparse.Namespace) -> int:
    """A folder or a shard set through pipelines.batch_upscale (Ray Data, or --local)."""
    from pipelines.batch_upscale import BatchConfigError, run_batch_upscale
    from pipelines.cluster_guard import SharedStorageError

    try:
        result = run_batch_upscale(
            args.model,
            args.out,
            input_dir=args.input_dir,
            shards=args.shards,
            split=args.split,
            prompt=args.prompt[0] if args.prompt else None,
            out_format=args.out_format,
            scale=args.scale,
            tracking_uri=args.tracking_uri,
            endpoint_url=args.endpoint_url,
            gpu=args.gpu,
            concurrency=args.concurrency,
            batch_size=args.batch_size,
            use_ray=not args.local,
            shared_filesystem=args.shared_filesystem,
            device=args.device,
        )
    except (BatchConfigError, SharedStorageError) as err:
        return _fail(str(err))
    reasons = ", ".join(f"{n} {r}" for r, n in result.reasons.items())
    print(
        f"{PROG}: {result.written} written, {result.skipped} skipped"
        + (f" ({reasons}; see {result.out}/skipped.jsonl)" if reasons else "")
        + f" -> {result.out} with {result.model_uri} in {result.seconds:.1f}s",
        file=sys.stderr,
    )
    return 1 if result.skipped else 0


@console.command(PROG)
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.workers is not None:
        if args.concurrency is not None:
            parser.error("--workers is the old name of --concurrency: give only --concurrency")
        warnings.warn("'--workers' is deprecated, use '--concurrency'", FutureWarning, 1)
        args.concurrency = args.workers
    if (args.model is None) == (args.checkpoint is None):
        parser.error("give the model as --model URI (or --checkpoint DIR), once")
    args.model = args.model or args.checkpoint
    batch = args.input_dir is not None or args.shards is not None
    if batch and args.inputs:
        parser.error("give image files, or --input-dir / --shards, not both")
    if batch and len(args.prompt or []) > 1:
        parser.error("several --prompt make a prompt-editing grid: give single image files")
    if not batch and not args.inputs:
        parser.error("give image files, --input-dir DIR or --shards PATH")
    if not batch and (not args.prompt or any(p is None for p in args.prompt)):
        parser.error("--prompt is required for single image files")
    if not batch and args.out_format != "files":
        parser.error("--out-format shards needs --input-dir or --shards")
    if not batch and "://" in args.out:
        parser.error("--out: single files are written to a local directory (s3:// in batch mode)")
    from pipelines.local_paths import blocking_file

    if (taken := blocking_file(args.out)) is not None:
        return _fail(f"--out: {taken} exists and is not a directory; choose another --out")
    from jobs.tracking import default_tracking_uri

    args.tracking_uri = default_tracking_uri(args.tracking_uri or "") or None
    return run_batch(args) if batch else run_files(args)


if __name__ == "__main__":
    sys.exit(main())
