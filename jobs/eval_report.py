"""The HTML report of ``clipsr evaluate``: metrics next to bicubic, the caption ablation, and image
grids (LR, bicubic, SR with the true and a mismatched caption, HR) as PNG files beside it.

Static HTML, no script, no external resource; every caption and URI goes through html.escape.
The same evaluation gives the same bytes (no timestamps).
"""

from __future__ import annotations

import html
import io
from pathlib import Path
from typing import Any

from PIL import Image

from clipsr.evaluation import GRID_IMAGES, png_bytes

IMAGES_DIR = "images"
TITLES = {
    "lr": "LR (nearest)",
    "bicubic": "bicubic",
    "sr": "SR, true caption",
    "sr_mismatched": "SR, mismatched caption",
    "hr": "HR",
}
QUALITY = (  # (label, metric, bicubic metric, higher is better)
    ("PSNR (RGB, dB)", "psnr", "psnr_bicubic", True),
    ("SSIM (RGB)", "ssim", "ssim_bicubic", True),
    ("PSNR (Y, dB)", "psnr_y", "psnr_y_bicubic", True),
    ("SSIM (Y)", "ssim_y", "ssim_y_bicubic", True),
    ("LPIPS", "lpips", "lpips_bicubic", False),
)
STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.better { color: #0a6b1f; font-weight: bold; }
.grid td, .grid th { text-align: center; vertical-align: top; }
.grid img { width: 160px; image-rendering: pixelated; display: block; }
.zoom img { width: 128px; }
.zoom td { font-size: 0.8em; max-width: 10em; }
.grid td.caption { text-align: left; max-width: 24em; font-size: 0.9em; }
code { font-size: 0.9em; }
.warning { color: #8a3b00; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _quality_table(m: dict[str, float]) -> list[str]:
    out = ["<table><tr><th>metric</th><th>model</th><th>bicubic</th><th>model - bicubic</th></tr>"]
    for label, name, bic, higher in QUALITY:
        if name not in m:
            continue
        digits = 2 if name.startswith("psnr") else 4
        delta = m[name] - m[bic]
        good = delta > 0 if higher else delta < 0
        css = ' class="better"' if good else ""
        out.append(
            f"<tr><td>{label}</td><td{css}>{_num(m[name], digits)}</td>"
            f"<td>{_num(m[bic], digits)}</td><td>{delta:+.{digits}f}</td></tr>"
        )
    out.append("</table>")
    if "clip_score" in m:
        out.append(f"<p>CLIP-score of SR vs its true caption: {_num(m['clip_score'], 2)}</p>")
    return out


def _ablation_table(m: dict[str, float]) -> list[str]:
    rows = (
        ("true caption", m["psnr"], m["ssim"], None),
        ("mismatched caption", m["psnr_caption_mismatched"], m["ssim_caption_mismatched"],
         m["text_gain_psnr"]),
        ("empty caption", m["psnr_caption_empty"], m["ssim_caption_empty"],
         m["text_gain_psnr_empty"]),
    )  # fmt: skip
    out = [
        "<table><tr><th>caption</th><th>PSNR (dB)</th><th>SSIM</th>"
        "<th>text gain (dB): true minus this</th></tr>"
    ]
    for label, p, s, gain in rows:
        shown = "" if gain is None else f"{gain:+.3f}"
        out.append(f"<tr><td>{label}</td><td>{p:.3f}</td><td>{s:.4f}</td><td>{shown}</td></tr>")
    out.append("</table>")
    return out


def _grid(scale: int, rows: list[dict[str, Any]], out_dir: Path) -> list[str]:
    (out_dir / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    head = "".join(f"<th>{_e(TITLES[k])}</th>" for k in GRID_IMAGES)
    out = [f'<table class="grid"><tr><th>#</th>{head}<th>captions</th></tr>']
    for row in rows:
        cells = []
        for kind in GRID_IMAGES:
            name = f"{IMAGES_DIR}/x{scale}_{row['index']:04d}_{kind}.png"
            (out_dir / name).write_bytes(png_bytes(row["images"][kind]))
            alt = f"{TITLES[kind]} of sample {row['index']}"
            cells.append(f'<td><img src="{_e(name)}" alt="{_e(alt)}"></td>')
        captions = (
            f"<b>true:</b> {_e(row['caption'])}<br>"
            f"<b>mismatched:</b> {_e(row['caption_mismatched'])}<br>"
            f"<small>{_e(row['key'])}: PSNR {row['psnr']:.2f} dB, "
            f"mismatched {row['psnr_caption_mismatched']:.2f} dB</small>"
        )
        out.append(
            f'<tr><td>{row["index"]}</td>{"".join(cells)}<td class="caption">{captions}</td></tr>'
        )
    out.append("</table>")
    return out


ZOOM = 4  # the zoomed crops are shown at 4x, nearest (pixels stay pixels)


def _adherence_table(m: dict[str, float]) -> list[str]:
    chance = m["adherence_chance"]
    rows = (
        ("adherence: objects drawn as the caption's shape", f"{m['adherence']:.1%}",
         f"{chance:.0%}"),
        ("edit success: only the shape word swapped, objects drawn as the new shape",
         f"{m['edit_success']:.1%}", f"{chance:.0%}"),
        ("shape-only text gain: PSNR true caption minus shape word swapped",
         f"{m['text_gain_shape_psnr']:+.3f} dB", "0 dB"),
    )  # fmt: skip
    out = ["<table><tr><th>prompt adherence</th><th>model</th><th>chance</th></tr>"]
    out += [f"<tr><td>{_e(a)}</td><td>{b}</td><td>{c}</td></tr>" for a, b, c in rows]
    out.append("</table>")
    out.append(
        f"<p>{int(m['adherence_samples'])} samples whose caption follows the set's declared "
        "pattern. Shapes are told apart by a pixel template classifier (normalised correlation "
        "with each shape's mask, exact on the ground truth); a flat blob matches no shape.</p>"
    )
    return out


def _zoomed(encoded: str, box: list[int]) -> bytes:
    image = Image.open(io.BytesIO(png_bytes(encoded))).convert("RGB").crop(tuple(box))
    image = image.resize((image.width * ZOOM, image.height * ZOOM), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _zoom_grid(scale: int, rows: list[dict[str, Any]], out_dir: Path) -> list[str]:
    """Per sample: LR (nearest), bicubic, SR with the true caption and with each swapped shape
    word, HR, cropped to two cells around an object and zoomed; the classifier's verdict under
    each SR crop."""
    rows = [r for r in rows if "zoom_box" in r]
    if not rows:
        return []
    out = [
        f"<h3>Zoomed crops ({ZOOM}x): does the drawn shape follow the caption?</h3>",
        '<table class="grid zoom">',
    ]
    for row in rows:
        verdicts = row.get("verdicts", {})
        cells = [("lr", "LR (nearest)", None), ("bicubic", "bicubic", None)]
        true_shape = next(iter(verdicts), None)
        cells.append(("sr", f"SR, true caption ({true_shape})", verdicts.get(true_shape)))
        for key in sorted(k for k in row["images"] if k.startswith("swapped:")):
            shape = key.removeprefix("swapped:")
            cells.append((key, f"SR, shape word: {shape}", verdicts.get(shape)))
        cells.append(("hr", "HR", None))
        tds = []
        for key, title, verdict in cells:
            name = f"{IMAGES_DIR}/x{scale}_{row['index']:04d}_zoom_{key.replace(':', '-')}.png"
            (out_dir / name).write_bytes(_zoomed(row["images"][key], row["zoom_box"]))
            shown = (
                ""
                if verdict is None and key in ("lr", "bicubic", "hr")
                else (f"<br><b>drawn: {_e(verdict or 'no shape')}</b>")
            )
            tds.append(
                f'<td><img src="{_e(name)}" alt="{_e(title)} of sample {row["index"]}">'
                f"{_e(title)}{shown}</td>"
            )
        out.append(
            f"<tr><td>{row['index']}<br><small>{_e(row['caption'])}</small></td>{''.join(tds)}</tr>"
        )
    out.append("</table>")
    return out


def _sample_table(scale: int, rows: list[dict[str, Any]]) -> list[str]:
    """Every evaluated sample: its caption, PSNR next to bicubic and (where measured) how many
    of its objects were drawn as the caption's shape."""
    out = [
        f"<details><summary>All {len(rows)} samples at {scale}x</summary>",
        "<table><tr><th>#</th><th>key</th><th>caption</th><th>PSNR</th><th>bicubic</th>"
        "<th>adherent objects</th></tr>",
    ]
    for r in rows:
        adh = f"{r['adherent']}/{r['objects']}" if "objects" in r else "–"
        out.append(
            f"<tr><td>{r['index']}</td><td>{_e(r['key'])}</td><td>{_e(r['caption'])}</td>"
            f"<td>{r['psnr']:.2f}</td><td>{r['psnr_bicubic']:.2f}</td><td>{adh}</td></tr>"
        )
    out.append("</table></details>")
    return out


def _provenance(model: dict[str, Any], run: dict[str, str] | None) -> list[str]:
    """Which CLIP the model ran on (with a warning when it is random) and the MLflow run."""
    out = []
    weights = model.get("clip_weights")
    if weights:
        out.append(f"<p>CLIP weights: <b>{_e(weights)}</b>.</p>")
        if weights.startswith("random"):
            out.append(
                '<p class="warning">CLIP is randomly initialised: the CLIP-score and the '
                "caption ablation measure a random text encoder, not pretrained semantics.</p>"
            )
    if run:
        serve = f" (serve it first: <code>{_e(run['serve'])}</code>)" if run.get("serve") else ""
        out.append(
            f"<p>MLflow run <code>{_e(run['id'])}</code>: "
            f'<a href="{_e(run["url"])}">{_e(run["url"])}</a>{serve}</p>'
        )
    return out


def write_report(
    out_dir: str | Path,
    doc: dict[str, Any],
    grid_rows: dict[int, list[dict[str, Any]]],
    run: dict[str, str] | None = None,
) -> Path:
    """``out_dir/report.html`` for the evaluation document ``doc`` (the JSON's content) and the
    rows with images per scale; the PNGs go to ``out_dir/images/``; ``run`` (``id``, ``url``,
    ``serve``: :func:`jobs.tracking.run_page`) is the MLflow run it is logged to. Returns the
    report's path."""
    out_dir = Path(out_dir)
    model = doc["model"]
    version = f" version {model['version']}" if model.get("version") else ""
    name = f"{model['name']}{version}" if model.get("name") else model["uri"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<link rel="icon" href="data:,">',
        f"<title>clipsr evaluation: {_e(name)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>clipsr evaluation: {_e(name)}</h1>",
        f"<p>model <code>{_e(model['uri'])}</code>; {_e(doc['split'])} split of the shard set "
        f"<code>{_e(doc['manifest_sha256'][:16])}</code>; {doc['samples']} samples; "
        f"crop border {doc['settings']['crop_border']}.</p>",
        *_provenance(model, run),
    ]
    for scale_key, metrics in doc["metrics"].items():
        scale = int(scale_key.removeprefix("x"))
        parts.append(f"<h2>{scale}x</h2>")
        parts += _quality_table(metrics)
        parts.append("<h3>Caption ablation</h3>")
        parts += _ablation_table(metrics)
        if "adherence" in metrics:
            parts.append("<h3>Prompt adherence</h3>")
            parts += _adherence_table(metrics)
        rows = grid_rows.get(scale, [])
        if rows:
            parts.append(f"<h3>First {len(rows)} samples</h3>")
            parts += _grid(scale, rows, out_dir)
            parts += _zoom_grid(scale, rows, out_dir)
        parts += _sample_table(scale, doc["per_sample"].get(scale_key, []))
    parts.append("</body></html>")
    path = out_dir / "report.html"
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path
