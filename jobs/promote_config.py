"""Configuration of ``clipsr promote`` and its metric gates (YAML + ``a.b=value`` overrides).

A gate is ``{metric, rule, value, required}``:

- ``max_drop``: candidate >= champion - value (higher is better: psnr, ssim, clip_score...);
- ``max_rise``: candidate <= champion + value (lower is better: lpips);
- ``min`` / ``max``: candidate >= value / candidate <= value (the champion is not looked at);
- ``over_bicubic``: candidate >= its own bicubic baseline + value (for lpips: <= baseline -
  value), from the same evaluation: absolute, so it holds a first champion too.

``metric`` is a name of :data:`jobs.evaluation_record.METRIC_NAMES` (applied to every scale both
evaluations have, one result per scale) or ``x{scale}/{name}`` (that scale only). A metric missing
from an evaluation fails the gate, unless ``required: false`` (then the gate is skipped).
:func:`apply_gates` computes every gate's result; nothing is short-circuited.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from clipsr.config_loader import ConfigError, load_config
from jobs.evaluation_record import LOWER_IS_BETTER, metric_key, metric_names, parse_metric_key

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "configs" / "promote" / "default.yaml"
RELATIVE = ("max_drop", "max_rise")
EPS = 1e-9  # a value exactly at the limit passes, whatever the float rounding of the limit
# What to do when a metric is missing from an evaluation (by metric name prefix).
MISSING_HINTS = {
    "lpips": "evaluate with LPIPS weights (clipsr evaluate --lpips-backbone-weights FILE "
    "--lpips-linear-weights FILE)",
    "text_gain": "run the evaluation with the caption ablation",
    "psnr_caption": "run the evaluation with the caption ablation",
    "ssim_caption": "run the evaluation with the caption ablation",
}


@dataclass
class Gate:
    metric: str = ""
    rule: Literal["max_drop", "max_rise", "min", "max", "over_bicubic"] = "max_drop"
    value: float = 0.0
    required: bool = True

    @property
    def relative(self) -> bool:
        return self.rule in RELATIVE

    def describe(self) -> str:
        return {
            "max_drop": f"cand >= champ - {self.value:g}",
            "max_rise": f"cand <= champ + {self.value:g}",
            "min": f"cand >= {self.value:g}",
            "max": f"cand <= {self.value:g}",
            "over_bicubic": f"cand beats its bicubic by >= {self.value:g}",
        }[self.rule]


def _default_gates() -> list[Gate]:
    return [
        Gate("psnr", "over_bicubic", 0.0),
        Gate("psnr", "max_drop", 0.05),
        Gate("ssim", "max_drop", 0.005),
        Gate("lpips", "max_rise", 0.01, required=False),
        Gate("text_gain_psnr", "min", 0.0, required=False),
    ]


@dataclass
class PromoteConfig:
    model: str = ""  # registered model name
    version: str = ""  # candidate version ("" with rollback)
    alias: str = "champion"
    rollback: bool = False  # move the alias back to the champion's previous champion
    dry_run: bool = False  # print what would happen, change nothing
    tracking_uri: str = ""  # "" = MLFLOW_TRACKING_URI (required: no embedded store here)
    experiment: str = "clipsr-eval"  # where the evaluation runs are
    manifest_sha256: str = ""  # "" = the candidate's latest evaluation decides the test shards
    reason: str = ""  # "" = generated
    verify_artifacts: bool = True  # download the version and check its checkpoint's sha256s
    gates: list[Gate] = field(default_factory=_default_gates)

    def __post_init__(self) -> None:
        if isinstance(self.version, int) and not isinstance(self.version, bool):
            self.version = str(self.version)  # PromoteConfig(version=3) from Python

    def validate(self) -> None:
        if self.rollback and self.version:
            raise ConfigError("version: --rollback restores the previous champion, give no version")
        if not self.rollback and self.version and not self.version.isdigit():
            raise ConfigError(f"version: a registered model version number, not {self.version!r}")
        if not self.alias or not self.alias.replace("-", "_").isidentifier():
            raise ConfigError(f"alias: letters, digits, '_' or '-', not {self.alias!r}")
        for i, gate in enumerate(self.gates):
            key = f"gates[{i}]"
            parsed = parse_metric_key(gate.metric)
            name = parsed[1] if parsed else gate.metric
            if name not in metric_names() or name == "samples":
                raise ConfigError(
                    f"{key}.metric: unknown metric {gate.metric!r} (one of "
                    f"{', '.join(n for n in metric_names() if n != 'samples')}, optionally as "
                    "x{scale}/{name})"
                )
            if not math.isfinite(gate.value):
                raise ConfigError(f"{key}.value: a finite number, not {gate.value!r}")
            if gate.rule == "over_bicubic" and f"{name}_bicubic" not in metric_names():
                with_baseline = [n for n in metric_names() if f"{n}_bicubic" in metric_names()]
                raise ConfigError(
                    f"{key}.metric: over_bicubic needs a metric with a bicubic baseline "
                    f"({', '.join(with_baseline)}), not {gate.metric!r}"
                )
            if gate.relative and gate.value < 0:
                raise ConfigError(f"{key}.value: {gate.rule} takes a tolerance >= 0")

    def require_target(self) -> None:
        """The command line's part: a model, and a version unless rolling back."""
        if not self.model:
            raise ConfigError("model: give the registered model name (--model NAME)")
        if not self.rollback and not self.version:
            raise ConfigError("version: give the candidate version (--version N) or --rollback")


def load_promote_config(
    path: str | Path | None, overrides: list[str] = (), validate: bool = True
) -> PromoteConfig:
    return load_config(PromoteConfig, path, overrides, validate)  # validate() runs inside


@dataclass
class GateResult:
    metric: str  # the gate's metric as configured
    scale: int | None
    rule: str
    value: float  # the gate's tolerance or bound
    status: Literal["passed", "failed", "skipped"]
    candidate: float | None = None
    champion: float | None = None
    limit: float | None = None  # the bound the candidate was held to
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _missing(scale: int, name: str, which: str, run_id: str) -> str:
    hint = next((h for p, h in MISSING_HINTS.items() if name.startswith(p)), "")
    run = f" (evaluation {run_id})" if run_id else ""
    return f"{metric_key(scale, name)} not computed for the {which}{run}" + (
        f": {hint}" if hint else ""
    )


def _higher_is_better(gate: Gate, name: str) -> bool:
    if gate.rule == "over_bicubic":
        return name not in LOWER_IS_BETTER
    return gate.rule in ("max_drop", "min")


def _check(gate: Gate, name: str, cand: float, ref: float | None) -> tuple[bool, float]:
    """(passed, the bound): ``ref`` is the champion's value, or the bicubic baseline."""
    sign = 1.0 if _higher_is_better(gate, name) else -1.0
    limit = {
        "max_drop": (ref or 0.0) - gate.value,
        "max_rise": (ref or 0.0) + gate.value,
        "min": gate.value,
        "max": gate.value,
        "over_bicubic": (ref or 0.0) + sign * gate.value,
    }[gate.rule]
    ok = cand >= limit - EPS if sign > 0 else cand <= limit + EPS
    return ok, limit


def apply_gates(
    gates: list[Gate],
    candidate: dict[int, dict[str, float]],
    champion: dict[int, dict[str, float]] | None,
    candidate_run: str = "",
    champion_run: str = "",
) -> list[GateResult]:
    """Every gate's result, per scale. ``candidate``/``champion`` are ``{scale: {name: value}}``
    (``EvaluationRecord.by_scale()``); ``champion`` None means there is no champion, so relative
    gates are skipped. The caller checks that the candidate covers the champion's scales."""
    results = []
    for gate in gates:
        parsed = parse_metric_key(gate.metric)
        name = parsed[1] if parsed else gate.metric
        if parsed:
            scales = [parsed[0]]
        else:  # every scale both have (the champion's scales are the candidate's, checked)
            scales = sorted(champion if champion is not None and gate.relative else candidate)
        for scale in scales:
            res = GateResult(gate.metric, scale, gate.rule, gate.value, "failed")
            cand = candidate.get(scale, {}).get(name)
            champ = (champion or {}).get(scale, {}).get(name)
            res.candidate, res.champion = cand, champ
            problem, base = "", None
            if gate.rule == "over_bicubic":
                base = candidate.get(scale, {}).get(f"{name}_bicubic")
            if gate.relative and champion is None:
                res.status, res.note = "skipped", "no champion: relative gate not applied"
                results.append(res)
                continue
            if cand is None:
                problem = _missing(scale, name, "candidate", candidate_run)
            elif gate.relative and champ is None:
                problem = _missing(scale, name, "champion", champion_run)
            elif gate.rule == "over_bicubic" and base is None:
                problem = _missing(scale, f"{name}_bicubic", "candidate", candidate_run)
            elif not math.isfinite(cand) or (gate.relative and not math.isfinite(champ)):
                problem = f"{metric_key(scale, name)} is not a finite number"
            if problem:
                res.status = "failed" if gate.required else "skipped"
                res.note = problem if gate.required else f"{problem} (required: false)"
                results.append(res)
                continue
            ok, res.limit = _check(gate, name, cand, base if base is not None else champ)
            res.status = "passed" if ok else "failed"
            if not ok:
                if gate.relative:
                    sign = "-" if gate.rule == "max_drop" else "+"
                    how = f"champion {champ:.4f} {sign} {gate.value:g}"
                elif base is not None:
                    sign = "+" if _higher_is_better(gate, name) else "-"
                    how = f"bicubic {base:.4f} {sign} {gate.value:g}"
                else:
                    how = f"{gate.value:g}"
                word = "below" if _higher_is_better(gate, name) else "above"
                res.note = f"{metric_key(scale, name)} {cand:.4f} is {word} {res.limit:.4f} ({how})"
            results.append(res)
    return results
