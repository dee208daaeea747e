"""``clipsr convert-reference PTH OUT_DIR``: the authors' checkpoint as a clipsr checkpoint.

    clipsr convert-reference state_epoch_220.pth converted/ [--scale 4] [a.b=value ...]
    python -m jobs.convert_reference state_epoch_220.pth converted/

Reads the reference's ``state_epoch_*.pth`` with ``torch.load(weights_only=True)`` (with or
without DDP's ``module.`` prefixes), renames every tensor of G, D and the text head and the
frozen CLIP ViT trunk (``mapping.CLIP_ViT.*``) to clipsr's names (``clipsr/reference_weights.py``),
checks that every clipsr parameter got a tensor of its shape, and writes a checkpoint directory
(generator, discriminator, clip; the ``release`` wiring, the one that reproduces the reference's
outputs) that ``clipsr upscale``, ``clipsr evaluate`` and ``clipsr train`` (``run.init_from``)
accept. The text tower, ``ln_post`` and ``proj`` are not in the reference file: they come from
``model.clip`` (OpenAI ViT-B/32 by default; ``model.clip.checkpoint=FILE`` offline). It prints
the keys it dropped (modules the reference never runs) and any it could not place. Optimizer
and GradScaler states are not converted. Exit codes: 0 done, 2 bad input (one line naming it).
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

PART_LABELS = {
    "generator": "generator",
    "discriminator": "discriminator + text head",
    "clip": "CLIP ViT trunk",
}


@dataclass
class ConvertResult:
    out: Path
    scale: int
    epoch: int | None
    module_prefix: bool
    counts: dict[str, int]
    placed: dict[str, int]
    dropped: list[str]  # "netG fc_code.* (2 keys)" per never-run module
    dropped_keys: int
    unplaced: list[str]
    clip_source: str


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def run_convert(pth: str, out: str, scale: int = 4, overrides: list[str] = (), force=False):
    """Convert ``pth`` into the checkpoint directory ``out``; returns a :class:`ConvertResult`."""
    import torch

    from clipsr.checkpoint import save_checkpoint
    from clipsr.clip_backbone import ClipBackbone
    from clipsr.reference_weights import (
        convert,
        dropped_summary,
        read_reference_file,
        reference_clip_keys,
        reference_config,
    )
    from clipsr.training import build_discriminator, build_generator

    cfg = reference_config(scale, list(overrides))
    out_dir = Path(out)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not force:
        raise FileExistsError(f"{out_dir}: exists and is not an empty directory (or pass --force)")
    reference, info = read_reference_file(pth)
    clip = ClipBackbone(cfg.model.clip)
    generator = build_generator(cfg, clip)
    disc = build_discriminator(cfg, clip)
    clip_state = clip.weights_state_dict()
    expected = {
        "generator": generator.state_dict(),
        "discriminator": disc.state_dict(),
        "clip": reference_clip_keys(clip_state),
    }
    conversion = convert(reference, expected, source=str(pth))
    generator.load_state_dict(conversion.weights["generator"], strict=True)
    disc.load_state_dict(conversion.weights["discriminator"], strict=True)
    clip.model.load_state_dict({**clip_state, **conversion.weights["clip"]}, strict=True)
    clip_source = clip.weights_source
    meta = {
        "clip_weights": "checkpoint",
        "converted_from": {
            "file": Path(pth).name,
            "sha256": _sha256(Path(pth)),
            "epoch": info["epoch"],
            "clip_text_tower": clip_source,
        },
    }
    parts = {
        "generator": generator.state_dict(),
        "discriminator": disc.state_dict(),
        "clip": clip.weights_state_dict(),
    }
    with torch.no_grad():
        save_checkpoint(out_dir, cfg, parts, meta)
    return ConvertResult(
        out_dir,
        scale,
        info["epoch"],
        info["module_prefix"],
        conversion.counts,
        {t: len(w) for t, w in conversion.weights.items()},
        dropped_summary(conversion.dropped),
        sum(len(keys) for keys in conversion.dropped.values()),
        conversion.unplaced,
        clip_source,
    )


def format_summary(res: ConvertResult, pth: str) -> str:
    epoch = f"epoch {res.epoch}" if res.epoch is not None else "no epoch recorded"
    prefix = ", 'module.' prefixes stripped" if res.module_prefix else ""
    read = ", ".join(f"{p} {n}" for p, n in res.counts.items())
    placed = ", ".join(f"{PART_LABELS[t]} {n}" for t, n in res.placed.items())
    clip = (
        "RANDOM (no model.clip weights configured: text guidance means nothing)"
        if res.clip_source == "random"
        else f"from {res.clip_source}"
    )
    lines = [
        f"{pth} ({epoch}{prefix})",
        f"  read      {read} keys",
        f"  placed    {sum(res.placed.values())} tensors: {placed}",
        f"  dropped   {res.dropped_keys} keys of modules the reference builds but never runs:",
        *(f"              {d}" for d in res.dropped),
        f"  unplaced  {len(res.unplaced) or 'none'}",
        *(f"              {k}" for k in res.unplaced),
        f"  CLIP      text tower, ln_post and proj {clip}; ViT trunk from the file",
        "  not converted: optimizer and GradScaler states",
        f"wrote {res.out}: a {res.scale}x clipsr checkpoint, release wiring "
        "(generator, discriminator, clip)",
    ]
    return "\n".join(lines)


PROG = "clipsr convert-reference"


def build_parser():
    from jobs import console

    p = console.Parser(
        prog=PROG,
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("pth", metavar="PTH", help="the reference's state_epoch_*.pth")
    p.add_argument("out", metavar="OUT_DIR", help="the clipsr checkpoint directory to write")
    p.add_argument("overrides", nargs="*", help="config overrides a.b=value (model.clip.*, ...)")
    p.add_argument(
        "--scale",
        type=int,
        default=4,
        choices=(4, 8, 16),
        help="the scale the weights were trained for (the reference ships 4x; default 4)",
    )
    p.add_argument("--force", action="store_true", help="write into a non-empty OUT_DIR")
    return p


def main(argv: list[str] | None = None) -> int:
    from jobs import console

    return console.command(PROG)(_main)(argv)


def _main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import warnings

    from clipsr.checkpoint import CheckpointError
    from clipsr.clip_backbone import ClipWeightsError, RandomClipWeightsWarning
    from clipsr.config_loader import ConfigError
    from clipsr.reference_weights import ReferenceFormatError
    from jobs import console

    try:
        with warnings.catch_warnings():  # the summary says it, in its CLIP line
            warnings.simplefilter("ignore", RandomClipWeightsWarning)
            result = run_convert(args.pth, args.out, args.scale, args.overrides, args.force)
    except (
        ConfigError, ReferenceFormatError, ClipWeightsError, CheckpointError,
        FileNotFoundError, FileExistsError,
    ) as err:  # fmt: skip
        if console.verbose():
            raise
        return console.fail(PROG, err, 2)
    print(format_summary(result, args.pth))
    return 0


if __name__ == "__main__":
    sys.exit(main())
