"""Our full CLIP-SR training step against the reference's, measured side by side in one process.

For each preset and scale (batch 4, fp32, CPU), these arms run interleaved, round after round
(after one warm-up round each), so that load on a shared machine hits them alike:

- ``ours``: the sentence embeddings and ``clipsr.training.train_step`` with every loss (D step
  with matching-aware hinge + MA-GP, G step with L1 + VGG16 perceptual + adversarial + CLIP
  cosine; a random VGG16 where the preset has none);
- ``ours, preset losses``: the same with the preset's own losses (only where they differ: tiny);
- ``reference, VGG once``: the reference implementation's step rebuilt on the same G, D+C and CLIP
  modules (``benchmarks/reference_step.py`` says what makes it the reference's), its VGG16 built
  once;
- ``reference, as released``: the same with the whole VGG16 rebuilt and reloaded every step.

It prints each arm's median, min-max and interquartile range, and our step's ratio to each
reference arm: the ratio of the medians and the median [min-max] of the per-round ratios. Also
G's inference latency (batch 1) against the reference-style G (the same weights in the
reference's memory layout), ``--profile``: where the seconds of our step and of the
reference-style step go, ``--flops``: FLOPs per step of both (torch's FlopCounterMode). No
figure from outside this run is printed or compared with. The machine's load average is printed
with every table.

    python benchmarks/model_step.py                            # tiny + base, 4x and 16x
    python benchmarks/model_step.py --presets base --scales 4 --repeat 7 --profile
    python benchmarks/model_step.py --clock cpu --threads 1    # CPU seconds: busy shared host
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.* next to clipsr

import torch

from benchmarks.reference_step import ReferencePerceptual, reference_train_step, save_full_vgg16
from benchmarks.step_profile import StepProfile, instrumented, print_profile
from clipsr.config import load_clipsr_config
from clipsr.training import build_models, build_optimizers, count_parameters, train_step

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
OURS, OURS_PRESET, REF_ONCE, REF_RELEASED = (
    "ours",
    "ours, preset losses",
    "reference, VGG once",
    "reference, as released",
)


def load() -> str:
    return "load avg " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def _build(cfg):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models = build_models(cfg)
    return models, build_optimizers(models, cfg.optim)


def setup(preset: str, scale: int, batch: int, vgg_file: str):
    """Our models and the reference-style models (separate copies, the same initial weights),
    the batch and the step closures of every arm."""
    path = CONFIGS / f"{preset}-x{scale}.yaml"
    shipped = load_clipsr_config(path, [f"loss.vgg16_weights={vgg_file}"])
    cfg = load_clipsr_config(path, ["loss.perceptual=vgg16", f"loss.vgg16_weights={vgg_file}"])
    ours, ours_opts = _build(cfg)
    ref, ref_opts = _build(cfg)
    ref.perceptual = None  # the reference-style step brings its own VGG16
    for module in (ref.generator, ref.discriminator):  # the reference's layout
        module.to(memory_format=torch.contiguous_format)
    gen = torch.Generator().manual_seed(0)
    hr = torch.rand(batch, 3, cfg.model.hr_size, cfg.model.hr_size, generator=gen) * 2 - 1
    lr = torch.nn.functional.interpolate(hr, size=cfg.model.lr_size, mode="area")
    captions = [f"a photograph of thing number {i}" for i in range(batch)]
    weights = cfg.loss.weights

    def ours_step():
        return train_step(ours, ours_opts, lr, hr, ours.clip.encode_text(captions), weights)

    def ours_preset_step():
        perceptual, ours.perceptual = ours.perceptual, None
        try:
            return ours_step()
        finally:
            ours.perceptual = perceptual

    once = ReferencePerceptual(vgg_file, released=False)
    released = ReferencePerceptual(vgg_file, released=True)
    arms = {OURS: ours_step}
    if shipped.loss.perceptual == "none" or shipped.loss.weights.perceptual == 0:
        arms[OURS_PRESET] = ours_preset_step
    arms[REF_ONCE] = lambda: reference_train_step(ref, ref_opts, lr, hr, captions, once)
    arms[REF_RELEASED] = lambda: reference_train_step(ref, ref_opts, lr, hr, captions, released)
    return cfg, (ours, ours_opts), (ref, ref_opts, once), arms, (lr, hr, captions)


def interleaved(arms: dict, repeat: int, clock) -> dict[str, list[float]]:
    """Seconds per call of every arm: one untimed warm-up round, then ``repeat`` rounds."""
    times: dict[str, list[float]] = {name: [] for name in arms}
    for fn in arms.values():
        fn()
    for _ in range(repeat):
        for name, fn in arms.items():
            start = clock()
            fn()
            times[name].append(clock() - start)
    return times


def spread(values: list[float]) -> str:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return (
        f"{statistics.median(values):.3f} | {min(values):.3f}-{max(values):.3f} | "
        f"{q[0]:.3f}-{q[2]:.3f}"
    )


def ratios(ours: list[float], ref: list[float]) -> str:
    paired = [a / b for a, b in zip(ours, ref)]
    return (
        f"{statistics.median(ours) / statistics.median(ref):.2f}x "
        f"(paired {statistics.median(paired):.2f} [{min(paired):.2f}-{max(paired):.2f}])"
    )


def inference(ours, ref, lr, captions, repeat, clock) -> dict[str, list[float]]:
    text = ours.clip.encode_text(captions[:1])
    g_ours, g_ref = ours.generator.eval(), ref.generator.eval()

    def run(g, clip):
        with torch.no_grad():
            g(lr[:1], text, clip)

    times = interleaved(
        {"ours": lambda: run(g_ours, ours.clip), "reference-style": lambda: run(g_ref, ref.clip)},
        repeat,
        clock,
    )
    g_ours.train(), g_ref.train()
    return times


def profile_steps(ours, ref, arms, rounds, clock) -> None:
    models, opts = ours
    ref_models, ref_opts, once = ref
    profile = StepProfile(clock)
    with instrumented(models, opts, profile):
        print_profile("our step", profile.measure(arms[OURS], rounds))
    vgg = profile.wrap("VGG forward", once)
    lr, hr, captions = arms["_batch"]
    with instrumented(ref_models, ref_opts, profile):
        parts = profile.measure(
            lambda: reference_train_step(ref_models, ref_opts, lr, hr, captions, vgg), rounds
        )
    print_profile("reference-style step, VGG once", parts)


def flops(arms: dict) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    for name in (OURS, REF_ONCE):
        with FlopCounterMode(display=False) as counter:
            arms[name]()
        print(f"  {name}: {counter.get_total_flops() / 1e9:,.0f} GFLOP per step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "base"])
    parser.add_argument("--scales", nargs="+", type=int, default=[4, 16])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds after 1 warm-up")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall seconds, or this process's CPU seconds (steadier on a busy shared host)",
    )
    parser.add_argument("--no-released", action="store_true", help="skip the VGG-per-step arm")
    parser.add_argument("--profile", type=int, default=0, metavar="ROUNDS")
    parser.add_argument("--flops", action="store_true")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # each table as soon as it is measured
    torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    print(
        f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, fp32, CPU, "
        f"{args.clock} clock, {args.repeat} interleaved rounds; {load()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        vgg_file = str(Path(tmp) / "vgg16_random.pth")
        save_full_vgg16(vgg_file)  # a whole torchvision VGG16 state dict, as the release loads
        for preset in args.presets:
            for scale in args.scales:
                cfg, ours, ref, arms, batch = setup(preset, scale, args.batch, vgg_file)
                if args.no_released:
                    del arms[REF_RELEASED]
                title = f"{preset} {scale}x (HR {cfg.model.hr_size} px)"
                times = interleaved(arms, args.repeat, clock)
                print(f"\n{title}: train step, {load()}")
                print("| arm | median s | min-max | IQR | ours / this arm |")
                print("|---|---|---|---|---|")
                for name, values in times.items():
                    vs = ratios(times[OURS], values) if name.startswith("reference") else "-"
                    if name == OURS_PRESET:
                        vs = f"{ratios(values, times[REF_ONCE])} (this arm / reference once)"
                    print(f"| {name} | {spread(values)} | {vs} |")
                infer = inference(ours[0], ref[0], batch[0], batch[2], args.repeat, clock)
                print(f"\n{title}: G inference, batch 1, {load()}")
                print("| arm | median s | min-max | IQR | ours / this arm |")
                print("|---|---|---|---|---|")
                for name, values in infer.items():
                    vs = ratios(infer["ours"], values) if name != "ours" else "-"
                    print(f"| {name} | {spread(values)} | {vs} |")
                g_total, g_trainable = count_parameters(ours[0].generator)
                d_total = count_parameters(ours[0].discriminator)[0]
                print(
                    f"parameters: G {g_trainable:,} trainable, D+C {d_total:,}, "
                    f"CLIP {count_parameters(ours[0].clip)[0]:,} (frozen)"
                )
                if args.flops:
                    flops(arms)
                if args.profile:
                    arms["_batch"] = batch
                    profile_steps(ours, ref, arms, args.profile, clock)
                del ours, ref, arms


if __name__ == "__main__":
    main()
