"""The evaluation record: what ``clipsr evaluate`` writes to MLflow and ``clipsr promote`` reads.

An evaluation is one MLflow run in the evaluation experiment (default ``clipsr-eval``):

- tags say what was evaluated and on what: :data:`TAG_MODEL_NAME`, :data:`TAG_MODEL_VERSION`
  (when the model URI resolved to a registered version), :data:`TAG_MODEL_URI`,
  :data:`TAG_MANIFEST` (sha256 of the test shards' ``manifest.json``, see
  :func:`clipsr.shard_dataset.manifest_sha256`), :data:`TAG_SPLIT`, :data:`TAG_RESULT_SHA`
  (sha256 of the evaluation JSON);
- metrics are ``x{scale}/{name}`` (:func:`metric_key`), with the names in :data:`METRIC_NAMES`;
- the model version gets the tags ``clipsr.eval.run_id`` and ``clipsr.eval.manifest_sha256``
  of its latest evaluation (for people browsing the registry; promote searches the runs).

Two evaluations are comparable only when their manifest hashes are equal.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any

DEFAULT_EXPERIMENT = "clipsr-eval"
TAG_KIND = "clipsr.kind"  # = "evaluation" on every evaluation run
KIND = "evaluation"
TAG_MODEL_NAME = "clipsr.eval.model_name"
TAG_MODEL_VERSION = "clipsr.eval.model_version"
TAG_MODEL_URI = "clipsr.eval.model_uri"
TAG_MANIFEST = "clipsr.eval.manifest_sha256"
TAG_SPLIT = "clipsr.eval.split"
TAG_RESULT_SHA = "clipsr.eval.result_sha256"
TAG_CLIP_WEIGHTS = "clipsr.eval.clip_weights"  # which CLIP the model ran on (random, a tag...)
VERSION_TAG_RUN = "clipsr.eval.run_id"
VERSION_TAG_MANIFEST = "clipsr.eval.manifest_sha256"


# Per scale. "_bicubic" is the same metric of the MATLAB-bicubic upscale of the same LR;
# "_y" is on the Y channel (BT.601), the rest on RGB; all after cropping metrics.crop_border.
# The caption ablation runs the same images with the first caption of another image
# ("mismatched") and with "" ("empty"); text_gain_* = value(true) - value(ablated) in dB.
# Per-sample means come from clipsr.evaluation (LPIPS only when its weights are configured;
# clip_score is SR vs its true caption with the model's own CLIP).
@functools.cache
def metric_names() -> tuple[str, ...]:
    """Every metric name of the record (imports torch: ``clipsr.evaluation`` defines them)."""
    from clipsr.evaluation import ADHERENCE_METRICS, LPIPS_METRICS, SAMPLE_METRICS

    return (
        "samples",
        *SAMPLE_METRICS,
        *LPIPS_METRICS,
        "text_gain_psnr",  # psnr - psnr_caption_mismatched
        "text_gain_psnr_empty",  # psnr - psnr_caption_empty
        # Sets whose manifest declares attributes (clipsr.adherence): share of objects drawn as
        # the caption's shape (adherence) and as a swapped-in shape (edit_success), chance =
        # 1/shapes, text_gain_shape_psnr = psnr - psnr with only the shape word swapped.
        *ADHERENCE_METRICS,
    )


def __getattr__(name: str) -> Any:
    """``METRIC_NAMES`` (= :func:`metric_names`), computed on first use, so that importing this
    module (``clipsr promote --help``) does not import torch."""
    if name == "METRIC_NAMES":
        return metric_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


LOWER_IS_BETTER = frozenset({"lpips", "lpips_bicubic"})
_KEY = re.compile(r"^x(\d+)/([a-z0-9_]+)$")


def metric_key(scale: int, name: str) -> str:
    """``metric_key(4, "psnr") == "x4/psnr"``."""
    return f"x{int(scale)}/{name}"


def parse_metric_key(key: str) -> tuple[int, str] | None:
    """``(4, "psnr")`` for ``"x4/psnr"``; None for a key of another shape."""
    match = _KEY.match(key)
    return (int(match.group(1)), match.group(2)) if match else None


@dataclass
class EvaluationRecord:
    """One evaluation run, as read back from MLflow."""

    run_id: str
    model_name: str
    model_version: str
    manifest_sha256: str
    split: str
    metrics: dict[str, float] = field(default_factory=dict)

    def by_scale(self) -> dict[int, dict[str, float]]:
        """``{4: {"psnr": ..., ...}, 16: {...}}`` from the ``x{scale}/{name}`` metrics."""
        out: dict[int, dict[str, float]] = {}
        for key, value in self.metrics.items():
            parsed = parse_metric_key(key)
            if parsed:
                out.setdefault(parsed[0], {})[parsed[1]] = value
        return dict(sorted(out.items()))


def _quote(value: str) -> str:
    return f'"{value}"' if "'" in value else f"'{value}'"


def find_evaluation(
    client: Any,
    model_name: str,
    version: str,
    manifest_sha256: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
) -> EvaluationRecord | None:
    """The latest FINISHED evaluation of ``model_name`` version ``version`` (on the shard set
    ``manifest_sha256`` when given), or None. ``client`` is an ``mlflow.MlflowClient``."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    clauses = [
        f"tags.`{TAG_KIND}` = '{KIND}'",
        f"tags.`{TAG_MODEL_NAME}` = {_quote(model_name)}",
        f"tags.`{TAG_MODEL_VERSION}` = {_quote(str(version))}",
        "attributes.status = 'FINISHED'",
    ]
    if manifest_sha256:
        clauses.append(f"tags.`{TAG_MANIFEST}` = {_quote(manifest_sha256)}")
    runs = client.search_runs(
        [exp.experiment_id],
        " and ".join(clauses),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        return None
    run = runs[0]
    return EvaluationRecord(
        run_id=run.info.run_id,
        model_name=model_name,
        model_version=str(version),
        manifest_sha256=run.data.tags.get(TAG_MANIFEST, ""),
        split=run.data.tags.get(TAG_SPLIT, ""),
        metrics=dict(run.data.metrics),
    )
