"""Does the model follow the caption? Training curves on the leak-free shapes set, 16x.

On the generated shapes set (:mod:`pipelines.generated_shapes`), box-downsampled 16x, the LR is
bit-identical for every shape: only the caption can tell it (tests/pipelines/
test_generated_shapes.py proves it with a classifier). Each arm trains the tiny 16x preset with
the full CLIP-SR GAN step (:func:`clipsr.training.train_step`: L1, adversarial through the CLIP
discriminator, CLIP text-image similarity) from the same seed and data, and every ``--eval-every``
steps evaluates the EMA generator on 64 held-out images with the prompt-adherence metrics of
``clipsr evaluate`` (:mod:`clipsr.adherence`): adherence (objects drawn as the caption's shape),
edit success (only the shape word swapped: objects drawn as the requested shape) and the
shape-only text gain (PSNR with the true caption minus PSNR with a swapped shape word). Chance
is 25% for both rates, 0 dB for the gain.

Arms (``--arms`` picks some): the paper's model with a random or a domain CLIP (trained here first
with :mod:`clipsr.clip_pretrain` on the same training images, about a minute), native vs
pre-upsampled 16x, the CLIP-similarity weight, caption dropout, text-image fusion on the encoder
skips, EMA without its warm-up, Adam with momentum (0.9, 0.99) instead of the paper's (0, 0.9);
and, reported separately, the extension ``model.generator.head_text_stages`` (text-image fusion
after the head's pixel-shuffle stages), with the demo's exact settings as the last arm. Arms run
two at a time (``--parallel``), one thread each (2 cores); every arm gets the same wall-clock
budget (``--minutes`` in all) and reports the steps it reached.

    python benchmarks/text_guidance.py                      # every arm, 45 minutes in all
    python benchmarks/text_guidance.py --minutes 10 --arms paper-domain extension-domain

Writes ``text_guidance.json`` (the curves) and ``text_guidance.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "configs" / "tiny-x16.yaml"
NATIVE = ["model.generator.lr_pre_upsample=1"]
EXTENSION = ["model.generator.head_text_stages=4", "model.generator.head_channels=32"]
MOMENTUM = ["optim.betas=[0.9,0.99]"]  # the demo's 16x model (configs/demo/shapes-x16.yaml)
# name -> (CLIP, config overrides, caption dropout, EMA warm-up). CLIP "oracle": the text
# embedding is the caption's attributes one-hot (a perfect text encoder) and the loss L1 alone:
# can the generator draw a shape it is told exactly?
ARMS: dict[str, tuple[str, list[str], float, bool]] = {
    "paper-random": ("random", NATIVE, 0.0, True),
    "paper-domain": ("domain", NATIVE, 0.0, True),
    "paper-domain-preupsampled": ("domain", ["model.generator.lr_pre_upsample=2"], 0.0, True),
    "paper-domain-clipsim1": ("domain", [*NATIVE, "loss.weights.clip_similarity=1.0"], 0.0, True),
    "paper-domain-dropout": ("domain", NATIVE, 0.1, True),
    "paper-domain-skipfusion": ("domain", [*NATIVE, "model.generator.skip_fusion=true"], 0.0, True),
    "paper-domain-noemawarmup": ("domain", NATIVE, 0.0, False),
    "paper-domain-momentum": ("domain", [*NATIVE, *MOMENTUM], 0.0, True),
    "extension-random": ("random", [*NATIVE, *EXTENSION], 0.0, True),
    "extension-domain": ("domain", [*NATIVE, *EXTENSION], 0.0, True),
    "extension-domain-momentum": ("domain", [*NATIVE, *EXTENSION, *MOMENTUM], 0.0, True),
    "paper-oracle-l1": ("oracle", NATIVE, 0.0, True),
    "extension-oracle-l1": ("oracle", [*NATIVE, *EXTENSION, *MOMENTUM], 0.0, True),
}


def oracle_text(captions: list[str], dim: int):
    """A perfect text encoder: the caption's shape, colour and background one-hot (x3), zero
    for a caption outside the set's pattern."""
    import torch

    from clipsr.adherence import ShapeAttributes
    from pipelines.generated_shapes import attributes

    attrs = ShapeAttributes.from_dict(attributes())
    out = torch.zeros(len(captions), dim)
    offsets = (0, len(attrs.shapes), len(attrs.shapes) + len(attrs.colours))
    for k, caption in enumerate(captions):
        p = attrs.parse(caption)
        if p is None:
            continue
        out[k, offsets[0] + attrs.shapes.index(p.shape)] = 3.0
        out[k, offsets[1] + list(attrs.colours).index(p.colour)] = 3.0
        out[k, offsets[2] + list(attrs.backgrounds).index(p.background)] = 3.0
    return out


class OracleClip:
    """A CLIP whose text embedding is :func:`oracle_text` (images go to the real CLIP)."""

    def __init__(self, clip):
        self.clip = clip

    def encode_text(self, captions):
        return oracle_text(list(captions), self.clip.embed_dim)

    def __getattr__(self, name):
        return getattr(self.clip, name)


def shapes_data(n: int, seed: int):
    """(items, LR tensor, HR tensor) of the leak-free set, 16x box LR, images in [-1, 1]."""
    import numpy as np
    import torch

    from clipsr.degradations import box_downsample
    from pipelines.generated_shapes import generated_shapes

    items = generated_shapes(n, seed=seed)

    def tensor(arrays):
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1

    return (
        items,
        tensor([box_downsample(i.image, 16) for i in items]),
        tensor([i.image for i in items]),
    )


def train_domain_clip(path: Path, n_train: int, steps: int) -> dict:
    """A clipsr-tiny CLIP trained on the HR images and captions of the training set."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    from clipsr.adherence import ShapeAttributes
    from clipsr.clip_backbone import create_open_clip
    from clipsr.clip_pretrain import (
        ClipInput,
        clamp_logit_scale,
        clip_loss_step,
        contrastive_loss,
        degrade,
        zero_shot_accuracy,
    )
    from clipsr.config import ClipConfig
    from pipelines.generated_shapes import attributes

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _ = create_open_clip(ClipConfig(arch="clipsr-tiny"))
    tokenizer = open_clip.get_tokenizer("clipsr-tiny")
    clip_input = ClipInput.of(model)
    items, _, hr = shapes_data(n_train, 0)
    test_items, _, test_hr = shapes_data(64, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1, betas=(0.9, 0.98))
    loss_fn, g = contrastive_loss(), torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(items), (64,), generator=g)
        images = degrade(hr[idx], g, prob=0.3)
        loss = clip_loss_step(
            model, tokenizer, clip_input, loss_fn, images, [items[i].caption for i in idx]
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        clamp_logit_scale(model)
    model.eval()
    attrs = ShapeAttributes.from_dict(attributes())
    truth = [attrs.parse(i.caption) for i in test_items]
    accuracy = zero_shot_accuracy(model, tokenizer, clip_input, attrs, test_hr, truth)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return {"steps": steps, "zero_shot_hr": accuracy}


def evaluate(resolver_parts, test) -> dict:
    """Prompt-adherence metrics of a generator on the held-out images (as clipsr evaluate)."""
    import numpy as np
    import torch

    from clipsr.adherence import CaptionAttributes, ShapeAttributes, adherence_counts
    from clipsr.metrics import bicubic_upscale, psnr, tensor_to_uint8
    from pipelines.generated_shapes import attributes

    generator, clip = resolver_parts
    items, lr, hr = test
    attrs = ShapeAttributes.from_dict(attributes())
    parsed = [attrs.parse(i.caption) for i in items]
    with torch.no_grad():

        def sr(captions):
            return tensor_to_uint8(generator(lr, clip.encode_text(captions), clip).clamp(-1, 1))

        true = sr([i.caption for i in items])
        swapped = {
            s: sr([attrs.caption(CaptionAttributes(s, p.colour, p.background)) for p in parsed])
            for s in attrs.shapes
        }
    hr8, lr8 = tensor_to_uint8(hr), tensor_to_uint8(lr)
    objects = adherent = edits = hits = 0
    psnr_true, psnr_swap, psnr_bic = [], [], []
    for k, p in enumerate(parsed):
        others = {s: swapped[s][k] for s in attrs.shapes if s != p.shape}
        c = adherence_counts(attrs, p, hr8[k], true[k], others)
        objects, adherent = objects + c["objects"], adherent + c["adherent"]
        edits, hits = edits + c["edit_objects"], hits + c["edit_hits"]
        psnr_true.append(psnr(true[k], hr8[k]))
        psnr_swap.append(np.mean([psnr(x, hr8[k]) for x in others.values()]))
        psnr_bic.append(psnr(bicubic_upscale(lr8[k], 16), hr8[k]))
    return {
        "adherence": adherent / objects,
        "edit_success": hits / edits,
        "shape_gain_db": float(np.mean(psnr_true) - np.mean(psnr_swap)),
        "psnr": float(np.mean(psnr_true)),
        "psnr_bicubic": float(np.mean(psnr_bic)),
    }


def run_arm(name: str, clip_path: str, seconds: float, eval_every: int, n_train: int) -> dict:
    import torch

    from clipsr.clip_backbone import ClipBackbone
    from clipsr.config import load_clipsr_config
    from clipsr.training import (
        EMA,
        build_models,
        build_optimizers,
        drop_captions,
        train_step,
    )

    torch.set_num_threads(1)
    clip_kind, overrides, dropout, warmup = ARMS[name]
    overrides = [*overrides, "optim.generator_lr=0.001"]
    if clip_kind == "domain":
        overrides.append(f"model.clip.checkpoint={clip_path}")
    cfg = load_clipsr_config(PRESET, overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clip = ClipBackbone(cfg.model.clip)
    models = build_models(cfg, clip)
    optimizers = build_optimizers(models, cfg.optim)
    ema = EMA(models.generator, 0.99, warmup=warmup)
    items, lr, hr = shapes_data(n_train, 0)
    test = shapes_data(64, 1)
    text_encoder = OracleClip(clip) if clip_kind == "oracle" else clip
    g = torch.Generator().manual_seed(cfg.seed)
    curve, step, start = [], 0, time.perf_counter()
    while True:
        idx = torch.randint(0, len(items), (16,), generator=g)
        captions = drop_captions([items[i].caption for i in idx], dropout, g)
        text = text_encoder.encode_text(captions)
        if clip_kind == "oracle":  # L1 alone: can G draw what it is told exactly?
            fake = models.generator(lr[idx], text, clip)
            loss = torch.nn.functional.l1_loss(fake, hr[idx])
            optimizers.generator.zero_grad()
            loss.backward()
            optimizers.generator.step()
        else:
            train_step(models, optimizers, lr[idx], hr[idx], text, cfg.loss.weights)
        ema.update(models.generator, step)
        step += 1
        elapsed = time.perf_counter() - start
        if step % eval_every == 0 or elapsed > seconds:
            point = {"step": step, "seconds": round(elapsed, 1)}
            point |= evaluate((ema.model, text_encoder), test)
            curve.append(point)
            print(name, json.dumps(point), flush=True)
        if elapsed > seconds:
            break
    return {"arm": name, "clip": clip_kind, "overrides": overrides, "curve": curve}


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (
        ("adherence", "adherence (chance 25%)", 0.25),
        ("edit_success", "edit success (chance 25%)", 0.25),
        ("shape_gain_db", "shape-only text gain (dB)", 0.0),
    )
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    for ax, (key, title, chance) in zip(axes, panels):
        for r in results:
            style = "--" if r["arm"].startswith("extension") else "-"
            ax.plot(
                [p["step"] for p in r["curve"]],
                [p[key] for p in r["curve"]],
                style,
                marker="o",
                ms=3,
                label=r["arm"],
            )
        ax.axhline(chance, color="grey", lw=1, ls=":")
        ax.set_title(title)
        ax.set_xlabel("training steps (batch 16)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arms", nargs="*", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--minutes", type=float, default=45.0, help="wall clock for all arms")
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--train-images", type=int, default=1024)
    parser.add_argument("--clip-steps", type=int, default=300)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--clip", default="", help="a domain CLIP file to use instead of training")
    parser.add_argument("--out", default="runs/benchmarks/text_guidance")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    clip_path = Path(args.clip) if args.clip else out / "domain_clip.safetensors"
    clip_info = {"file": args.clip} if args.clip else None
    if not args.clip and any(ARMS[a][0] == "domain" for a in args.arms):
        clip_info = train_domain_clip(clip_path, args.train_images, args.clip_steps)
        print("domain CLIP:", json.dumps(clip_info), flush=True)
    left = args.minutes * 60 - (time.perf_counter() - start)
    rounds = math.ceil(len(args.arms) / args.parallel)
    seconds = max(30.0, left / rounds - 30)  # minus start-up and the last evaluation
    print(f"{len(args.arms)} arms, {args.parallel} at a time, {seconds:.0f} s each", flush=True)
    with ProcessPoolExecutor(args.parallel) as pool:
        jobs = [
            pool.submit(run_arm, a, str(clip_path), seconds, args.eval_every, args.train_images)
            for a in args.arms
        ]
        results = [j.result() for j in jobs]
    doc = {"domain_clip": clip_info, "seconds_per_arm": seconds, "arms": results}
    (out / "text_guidance.json").write_text(json.dumps(doc, indent=1))
    plot(results, out / "text_guidance.png")
    print(f"\n{'arm':<28}{'steps':>6}{'adherence':>11}{'edit':>8}{'gain dB':>9}{'PSNR':>7}")
    for r in results:
        p = r["curve"][-1]
        print(
            f"{r['arm']:<28}{p['step']:>6}{p['adherence']:>11.1%}{p['edit_success']:>8.1%}"
            f"{p['shape_gain_db']:>9.2f}{p['psnr']:>7.2f}"
        )
    bic = results[0]["curve"][-1]["psnr_bicubic"]
    print(f"bicubic PSNR {bic:.2f} dB; chance: adherence/edit 25%, gain 0 dB")
    print(f"curves: {out / 'text_guidance.json'}, {out / 'text_guidance.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
