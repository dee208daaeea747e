"""``clipsr upscale``: super-resolve LR images with a checkpoint, guided by one or more prompts.

    clipsr upscale --checkpoint DIR --prompt "a red bird" --scale 4 lr1.png lr2.png --out out/

With several ``--prompt`` values each image is upscaled once per prompt and a side-by-side grid
(LR, then each SR labelled with its prompt and CLIP-score) is written too (prompt editing).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from PIL import Image, UnidentifiedImageError

log = logging.getLogger("clipsr.upscale")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clipsr upscale", description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="+", metavar="IN", help="low-resolution image files")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (checkpoint.json)")
    p.add_argument(
        "--prompt",
        action="append",
        required=True,
        help="caption guiding the upscale; repeat for a prompt-editing grid",
    )
    p.add_argument("--scale", type=int, required=True, help="upscale factor (the model's)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")
    return p


def _slug(index: int, prompt: str) -> str:
    words = "".join(c if c.isalnum() else "-" for c in prompt.lower()).strip("-")
    return f"p{index}-{words[:40].strip('-') or 'empty'}"


def run(args: argparse.Namespace) -> int:
    from clipsr.checkpoint import CheckpointError
    from clipsr.inference import SuperResolver, prompt_grid

    try:
        resolver = SuperResolver.from_checkpoint(args.checkpoint, device=args.device)
    except CheckpointError as err:
        print(f"clipsr upscale: {err}", file=sys.stderr)
        return 2
    if args.scale != resolver.scale:
        print(
            f"clipsr upscale: --scale {args.scale} but {args.checkpoint} is a "
            f"{resolver.scale}x model; pass --scale {resolver.scale} or another checkpoint",
            file=sys.stderr,
        )
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for name in args.inputs:
        path = Path(name)
        try:
            with Image.open(path) as img:
                lr = img.convert("RGB")
            resolver.check_size(*lr.size, name=str(path))
        except (OSError, UnidentifiedImageError, ValueError) as err:
            print(f"clipsr upscale: skipped {path}: {err}", file=sys.stderr)
            failed += 1
            continue
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
        report = [{"prompt": p, "clip_score": s} for p, s in zip(args.prompt, scores)]
        (out / f"{stem}.json").write_text(json.dumps(report, indent=2))
        print(f"{path} -> {', '.join(str(w) for w in written)}")
    if failed:
        print(f"clipsr upscale: {failed} of {len(args.inputs)} inputs skipped", file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if any(p is None for p in args.prompt):
        parser.error("--prompt needs a value")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
