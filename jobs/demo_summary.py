"""What ``clipsr demo`` reports: its checks, the summary table, the prompt-editing prompts."""

from __future__ import annotations

from pathlib import Path

SUMMARY = "summary.json"
MODELS = {"photos": 4, "shapes": 16}  # which corpus trains which scale


def edited_prompts(prompts: list[str], swaps: list[str], caption: str) -> list[str]:
    """``prompts`` with ``{caption}`` filled in, then ``caption`` with its first word of
    ``swaps`` replaced by each other word of ``swaps`` (nothing when it has none)."""
    texts = [p.replace("{caption}", caption) for p in prompts]
    words = caption.split()
    found = next((w for w in swaps if w in words), None)
    if found is not None:
        at = words.index(found)
        texts += [" ".join([*words[:at], w, *words[at + 1 :]]) for w in swaps if w != found]
    return texts


# At 16x on the leak-free shapes set, how far above chance (25%) adherence and edit success
# must be for --check: the demo's runs measured (README) reach far more; a model that ignores
# the caption stays at chance.
MIN_ADHERENCE = 0.5
MIN_EDIT_SUCCESS = 0.5


def stage_line(name: str, result: dict) -> str:
    """The one line a finished (or reused) stage of the demo prints: its result."""
    kind = name.split()[0]
    if kind == "corpus":
        return ", ".join(f"{corpus} {_count(r)}" for corpus, r in result.items())
    if kind == "preprocess":
        rejected = sum(result.get("rejected", {}).values())
        return f"{result['written']} samples written, {rejected} rejected -> {result['shards']}"
    if kind == "pretrain-clip":
        shown = ", ".join(
            f"{k.removeprefix('clip/')} {v:.0%}"
            for k, v in sorted(result.get("metrics", {}).items())
            if k.startswith("clip/zero_shot")
        )
        return f"{result['weights']} (held-out zero-shot: {shown}); {result.get('registered')}"
    if kind == "train":
        steps = f"{result['steps']} steps, " if result.get("steps") else ""
        uri = result.get("model_uri") or f"models:/{result['registered_model']}/{result['version']}"
        return f"{steps}registered {uri}; CLIP weights: {result.get('clip_weights', '?')}"
    if kind == "evaluate":
        scale = name.split()[1]
        m = result["metrics"]
        return (
            f"PSNR {m[f'{scale}/psnr']:.2f} dB vs bicubic {m[f'{scale}/psnr_bicubic']:.2f} dB on "
            f"{int(m[f'{scale}/samples'])} held-out samples; report {result['report']}"
        )
    if kind == "promote":
        return f"{result['action'].replace('_', ' ')}: {result['alias']} -> version " + str(
            result.get("version", "?")
        )
    if kind == "upscale":
        return f"{result['written']} images -> {result['out']}; prompt editing {result['grid']}"
    return ""


def _count(result: object) -> str:
    if isinstance(result, dict):
        numbers = {k: v for k, v in result.items() if isinstance(v, int)}
        return ", ".join(f"{v} {k}" for k, v in numbers.items()) or "written"
    return "written"


def stage_details(name: str, result: dict) -> str:
    """What a stage shows under its line (from a newline on): the evaluation table, the gate
    table; "" for the other stages."""
    kind = name.split()[0]
    if kind == "evaluate":
        from jobs.evaluate import format_table

        return _indent(format_table(result["metrics"]))
    if kind == "promote" and result.get("gates"):
        return _indent(result["gates"])
    return ""


def _indent(text: str) -> str:
    return "".join("\n    " + line if line else "\n" for line in text.splitlines())


def checks(results: dict) -> dict[str, bool]:
    """The demo's claims: 4x beats bicubic on held-out photos; at 16x on the leak-free shapes
    the model draws the shape its caption names, and a swapped shape word, well above chance."""
    x4 = results["photos"]["evaluate"]["metrics"]
    x16 = results["shapes"]["evaluate"]["metrics"]
    return {
        "x4 photos: PSNR above bicubic": x4["x4/psnr"] > x4["x4/psnr_bicubic"],
        "x16 shapes: PSNR above bicubic": x16["x16/psnr"] > x16["x16/psnr_bicubic"],
        f"x16 shapes: prompt adherence >= {MIN_ADHERENCE:.0%} (chance 25%)": x16.get(
            "x16/adherence", 0.0
        )
        >= MIN_ADHERENCE,
        f"x16 shapes: edit success >= {MIN_EDIT_SUCCESS:.0%} (chance 25%)": x16.get(
            "x16/edit_success", 0.0
        )
        >= MIN_EDIT_SUCCESS,
        "x16 shapes: the shape word alone gains PSNR": x16.get("x16/text_gain_shape_psnr", 0.0) > 0,
    }


def model_arch(result: dict) -> str:
    return f"{result['train']['registered_model']} version {result['train']['version']}"


def format_summary(results: dict, workdir: Path) -> str:
    lines = ["", "clipsr demo: summary", ""]
    lines.append(
        f"{'scale':<6}{'held-out set':<14}{'n':>4}  {'PSNR SR':>8} {'bicubic':>8}  "
        f"{'SSIM SR':>8} {'bicubic':>8}  {'text gain (mismatched / empty)':>31}"
    )
    for corpus, scale in MODELS.items():
        m = results[corpus]["evaluate"]["metrics"]

        def g(name: str, m=m, scale=scale) -> float:
            return m.get(f"x{scale}/{name}", float("nan"))

        label = "photographs" if corpus == "photos" else "shapes"
        gains = f"{g('text_gain_psnr'):+.2f} dB / {g('text_gain_psnr_empty'):+.2f} dB"
        lines.append(
            f"{f'{scale}x':<6}{label:<14}{int(g('samples')):>4}  {g('psnr'):>8.2f} "
            f"{g('psnr_bicubic'):>8.2f}  {g('ssim'):>8.4f} {g('ssim_bicubic'):>8.4f}  {gains:>31}"
        )
    x16 = results["shapes"]["evaluate"]["metrics"]
    if "x16/adherence" in x16:
        chance = x16["x16/adherence_chance"]
        lines += [
            "",
            "16x text guidance (leak-free shapes: only the caption tells the shape):",
            f"  prompt adherence {x16['x16/adherence']:>6.1%}   (chance {chance:.0%}): objects "
            "drawn as the caption's shape",
            f"  edit success     {x16['x16/edit_success']:>6.1%}   (chance {chance:.0%}): "
            "shape word swapped, objects drawn as the new shape",
            f"  shape-only gain  {x16['x16/text_gain_shape_psnr']:+.2f} dB (chance 0 dB): PSNR, "
            "true caption minus shape word swapped",
        ]
        clip = results["shapes"].get("clip") or {}
        if clip.get("metrics"):
            acc = clip["metrics"].get("clip/zero_shot_shape")
            lines.append(
                f"  domain CLIP: {clip['weights']} (held-out zero-shot shape accuracy "
                f"{acc:.0%}); registered as {clip.get('registered')}"
            )
    lines.append("")
    for corpus, scale in MODELS.items():
        weights = results[corpus]["train"].get("clip_weights", "?")
        lines.append(f"{scale}x model: {model_arch(results[corpus])}; CLIP weights: {weights}")
    lines += ["", "time per stage (0 s: reused from an earlier run):"]
    lines += [f"  {k:<20} {v:>7.1f} s" for k, v in results["seconds"].items()]
    lines += ["", "checks:"]
    lines += [f"  [{'ok' if v else 'FAILED'}] {k}" for k, v in results["checks"].items()]
    if results.get("console_noise"):
        lines.append(f"  console: {results['console_noise']}")
    lines += ["", "outputs:"]
    for corpus in MODELS:
        r = results[corpus]
        lines.append(f"  {corpus}: report {r['evaluate']['report']}")
        lines.append(f"  {corpus}: upscaled images {r['upscale']['out']}")
        lines.append(f"  {corpus}: prompt editing {r['upscale']['grid']}")
        lines.append(f"  {corpus}: model {r['promote']['alias']}")
    lines.append(f"  summary: {workdir / SUMMARY}")
    uri = results["tracking_uri"]
    if uri.startswith("sqlite:///"):
        lines += [
            "",
            "Browse runs, metrics and the registry in the MLflow UI:",
            f"  .venv/bin/mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000",
            "  then open http://127.0.0.1:5000",
        ]
    else:
        lines += ["", f"Runs and the registry are on the MLflow server {uri}"]
    return "\n".join(lines)
