"""``clipsr promote``: move a registered model's champion alias to a version behind metric gates.

    clipsr promote --model NAME --version N [--dry-run] [--reason TEXT] [--manifest-sha256 SHA]
    clipsr promote --model NAME --rollback [--dry-run]

The candidate's latest evaluation (``clipsr evaluate``, read through
:mod:`jobs.evaluation_record`) fixes the test shards (``--manifest-sha256`` pins them); the
champion needs an evaluation on the same shards, at every scale it was evaluated at. Every gate of
the config (``configs/promote/default.yaml``) is checked and printed. On success the version gets
audit tags (``clipsr.promote.*``: previous champion, gate results, reason, time, user, shards,
both evaluation runs), then the alias moves. With no champion yet, the version becomes the first
one behind the absolute gates only. ``--rollback`` points the alias back at the champion's
``previous_champion``. Exit codes: 0 done (or nothing to do, or a dry run that would pass),
1 refused (nothing changed), 2 bad usage, unknown model or version, no tracking server.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass, field
from typing import Any

from clipsr.config_loader import ConfigError
from jobs import console
from jobs import registry as reg
from jobs.evaluation_record import EvaluationRecord, find_evaluation
from jobs.promote_config import (
    DEFAULT_CONFIG,
    GateResult,
    PromoteConfig,
    apply_gates,
    load_promote_config,
)

DONE = ("promoted", "first_champion", "rolled_back", "noop")
PROG = "clipsr promote"


@dataclass
class PromoteResult:
    # promoted | first_champion | noop | refused | dry_run | rolled_back
    action: str
    model: str
    alias: str
    candidate: str | None = None  # the version the alias points at afterwards (or would)
    previous: str | None = None  # the version it pointed at before (None: not set)
    planned: str = ""  # for a dry run: the action it would take (refused included)
    gates: list[GateResult] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    manifest_sha256: str = ""
    candidate_run: str = ""
    champion_run: str = ""
    tags: dict[str, dict[str, str]] = field(default_factory=dict)  # version -> audit tags

    @property
    def ok(self) -> bool:
        return self.action in DONE or (self.action == "dry_run" and self.planned != "refused")

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1


def _tracking_uri(cfg: PromoteConfig) -> str:
    from jobs.tracking import default_tracking_uri

    uri = default_tracking_uri(cfg.tracking_uri)
    if not uri:
        raise ConfigError(
            "tracking_uri: no MLflow tracking store (pass --tracking-uri, set "
            "MLFLOW_TRACKING_URI, or run from the directory where clipsr train made runs/mlflow.db)"
        )
    return uri


def _shards_of(client: Any, run_id: str) -> str:
    """The shards an evaluation ran on (``clipsr evaluate`` logs its config as params)."""
    try:
        return client.get_run(run_id).data.params.get("shards", "")
    except Exception:  # only a nicer hint: never fail on it
        return ""


def _evaluate_hint(name: str, version: str, shards: str, manifest: str) -> str:
    where = shards or f"<the test shards whose manifest.json has sha256 {manifest}>"
    if not manifest:
        where = shards or "<test shards>"
    return f"clipsr evaluate --model models:/{name}/{version} --shards {where}"


def _refuse(res: PromoteResult, *reasons: str) -> PromoteResult:
    res.action = "refused"
    res.reasons.extend(reasons)
    return res


def _evaluations(
    client: Any, cfg: PromoteConfig, res: PromoteResult, champion: str | None
) -> tuple[EvaluationRecord | None, EvaluationRecord | None]:
    """(candidate's, champion's) evaluations on the same shards; refusal reasons added to
    ``res`` when one is missing."""
    name, version = cfg.model, cfg.version
    pin = cfg.manifest_sha256 or None
    cand = find_evaluation(client, name, version, pin, cfg.experiment)
    if cand is None:
        on = f" on the test shards with manifest sha256 {pin}" if pin else ""
        _refuse(
            res,
            f"version {version} has no finished evaluation{on} in experiment "
            f"{cfg.experiment!r}; run: {_evaluate_hint(name, version, '', pin or '')}",
        )
        return None, None
    res.manifest_sha256, res.candidate_run = cand.manifest_sha256, cand.run_id
    if champion is None:
        return cand, None
    champ = find_evaluation(client, name, champion, cand.manifest_sha256, cfg.experiment)
    if champ is None:
        shards = _shards_of(client, cand.run_id)
        other = find_evaluation(client, name, champion, None, cfg.experiment)
        seen = (
            f" (its latest evaluation, run {other.run_id}, is on shards {other.manifest_sha256})"
            if other
            else " (it has no evaluation at all)"
        )
        _refuse(
            res,
            f"champion version {champion} has no evaluation on the candidate's test shards "
            f"(manifest sha256 {cand.manifest_sha256}, evaluation run {cand.run_id}){seen}; "
            f"run: {_evaluate_hint(name, champion, shards, cand.manifest_sha256)}",
        )
        return cand, None
    res.champion_run = champ.run_id
    return cand, champ


def _verify(cfg: PromoteConfig, uri: str, version: str, res: PromoteResult) -> bool:
    from clipsr.checkpoint import CheckpointError

    if not cfg.verify_artifacts:
        return True
    try:
        reg.verify_version_artifacts(uri, cfg.model, version)
    except CheckpointError as err:
        _refuse(res, f"the model artifact of version {version} is unusable: {err}")
        return False
    return True


def _plan_promotion(client: Any, cfg: PromoteConfig, uri: str, champion: str | None):
    name, version = cfg.model, cfg.version
    res = PromoteResult("refused", name, cfg.alias, version, champion)
    reg.get_version(client, name, version)  # RegistryError (exit 2) if it does not exist
    if champion == version:
        res.action = "noop"
        res.reasons.append(f"version {version} already is {name}@{cfg.alias}: nothing to do")
        return res
    cand, champ = _evaluations(client, cfg, res, champion)
    if cand is None or (champion is not None and champ is None):
        return res
    cand_scales = cand.by_scale()
    champ_scales = champ.by_scale() if champ else None
    if not cand_scales:
        return _refuse(res, f"evaluation run {cand.run_id} has no x{{scale}}/... metrics")
    missing = sorted(set(champ_scales or ()) - set(cand_scales))
    if missing:
        scales = ", ".join(f"x{s}" for s in missing)
        return _refuse(
            res,
            f"the champion was evaluated at {scales} but the candidate was not "
            f"(evaluation run {cand.run_id}); evaluate the candidate at every champion scale",
        )
    res.gates = apply_gates(cfg.gates, cand_scales, champ_scales, cand.run_id, res.champion_run)
    failed = [g for g in res.gates if g.status == "failed"]
    if failed:
        return _refuse(res, *(f"gate {g.metric} {g.rule}: {g.note}" for g in failed))
    if not _verify(cfg, uri, version, res):
        return res
    res.action = "promoted" if champion else "first_champion"
    passed = sum(g.status == "passed" for g in res.gates)
    vs = f"against version {champion}" if champion else "(first champion: absolute gates only)"
    reason = cfg.reason or (
        f"passed {passed} gate results {vs} on test shards {cand.manifest_sha256[:12]}"
    )
    res.tags[version] = {
        reg.TAG_ACTION: res.action,
        reg.TAG_ALIAS: cfg.alias,
        reg.TAG_PREVIOUS: champion or reg.NONE,
        reg.TAG_GATES: json.dumps([g.to_dict() for g in res.gates], separators=(",", ":")),
        reg.TAG_REASON: reason,
        reg.TAG_AT: reg.now_utc(),
        reg.TAG_BY: reg.who(),
        reg.TAG_MANIFEST: cand.manifest_sha256,
        reg.TAG_CANDIDATE_RUN: cand.run_id,
        reg.TAG_CHAMPION_RUN: res.champion_run or reg.NONE,
    }
    return res


def _plan_rollback(client: Any, cfg: PromoteConfig, uri: str, champion: str | None):
    name, alias = cfg.model, cfg.alias
    res = PromoteResult("refused", name, alias, None, champion)
    if champion is None:
        return _refuse(res, f"{name}@{alias} is not set: there is nothing to roll back")
    previous = reg.version_tags(client, name, champion).get(reg.TAG_PREVIOUS)
    if previous is None:
        return _refuse(
            res,
            f"version {champion} has no {reg.TAG_PREVIOUS} tag (it was not made {alias} by "
            "clipsr promote), so there is no previous champion to restore; use "
            f"clipsr promote --model {name} --version N to choose one",
        )
    if previous == reg.NONE:
        return _refuse(
            res,
            f"version {champion} became {alias} as the first champion: there is no previous "
            f"one to restore (to unset the alias: MlflowClient().delete_registered_model_alias"
            f"({name!r}, {alias!r}))",
        )
    res.candidate = previous
    try:
        reg.get_version(client, name, previous)
    except reg.RegistryError as err:
        return _refuse(res, f"the previous champion cannot be restored: {err}")
    if not _verify(cfg, uri, previous, res):
        return res
    reason = cfg.reason or f"rollback of {name}@{alias} from version {champion} to {previous}"
    restored, demoted = reg.rollback_tags(previous, champion, reason)
    res.tags = {previous: restored, champion: demoted}
    res.action = "rolled_back"
    return res


def run_promote(cfg: PromoteConfig) -> PromoteResult:
    """Promote (or roll back) as ``cfg`` says; see the module docstring. Raises ConfigError,
    :class:`jobs.registry.RegistryError` or TrackingUnavailable for exit-code-2 problems."""
    import mlflow

    from jobs.tracking import check_tracking_uri

    cfg.require_target()
    cfg.validate()
    uri = _tracking_uri(cfg)
    check_tracking_uri(uri)
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    champion = reg.alias_version(client, cfg.model, cfg.alias)  # RegistryError: no such model
    plan = _plan_rollback if cfg.rollback else _plan_promotion
    res = plan(client, cfg, uri, champion)
    if res.action not in ("promoted", "first_champion", "rolled_back"):
        if cfg.dry_run and res.action == "refused":
            res.action, res.planned = "dry_run", "refused"
        return res
    if cfg.dry_run:
        res.action, res.planned = "dry_run", res.action
        return res
    try:
        reg.move_alias(
            client, cfg.model, cfg.alias, res.candidate, champion, res.tags[res.candidate]
        )
    except RuntimeError as err:
        return _refuse(res, str(err))
    for version, tags in res.tags.items():
        if version != res.candidate:  # the demoted version of a rollback
            reg.set_tags(client, cfg.model, version, tags)
    return res


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def format_gates(gates: list[GateResult]) -> str:
    """The gate results as a text table (every gate, every scale)."""
    head = ("gate", "rule", "scale", "candidate", "champion", "limit", "result", "note")
    rows = [head] + [
        (
            g.metric,
            f"{g.rule} {g.value:g}",
            f"x{g.scale}" if g.scale else "-",
            _num(g.candidate),
            _num(g.champion),
            _num(g.limit),
            g.status,
            g.note,
        )
        for g in gates
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head) - 1)]
    return "\n".join(
        ("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1]).rstrip()
        for r in rows
    )


def format_report(res: PromoteResult, cfg: PromoteConfig) -> str:
    name, alias = res.model, res.alias
    target = f"{name}@{alias}"
    was = res.previous or "not set"
    lines = []
    if cfg.rollback:
        lines.append(f"rollback of {target} (now version {was})")
        if res.candidate:
            lines.append(f"previous champion: version {res.candidate} ({reg.TAG_PREVIOUS})")
    else:
        vs = f"champion version {res.previous}" if res.previous else "no champion"
        lines.append(f"candidate {name} version {cfg.version} vs {vs} ({target})")
    if res.manifest_sha256:
        lines.append(f"test shards: manifest sha256 {res.manifest_sha256}")
        champ = res.champion_run or "none"
        lines.append(f"evaluation runs: candidate {res.candidate_run}, champion {champ}")
    if res.previous is None and not cfg.rollback and res.gates:
        lines.append("no champion yet: only absolute gates apply (relative ones are skipped)")
    if res.gates:
        lines += ["", format_gates(res.gates), ""]
    action = res.planned if res.action == "dry_run" else res.action
    verdict = {
        "promoted": f"PROMOTED: {target} -> version {res.candidate} (was version {was})",
        "first_champion": f"FIRST CHAMPION: {target} -> version {res.candidate}",
        "rolled_back": f"ROLLED BACK: {target} -> version {res.candidate} (was version {was})",
        "noop": f"NOTHING TO DO: version {res.candidate} already is {target}",
        "refused": f"REFUSED: {target} stays {'version ' + was if res.previous else 'unset'}",
    }[action]
    if res.action == "dry_run":
        verdict = f"DRY RUN, nothing changed; would be {verdict}"
    lines.append(verdict)
    lines += [f"  - {r}" for r in res.reasons if action != "noop"]
    if res.action == "dry_run" and res.tags:
        lines.append("audit tags it would write:")
    elif res.tags and res.action in DONE:
        lines.append("audit tags written:")
    for version, tags in res.tags.items() if res.action != "refused" else ():
        for key, value in tags.items():
            shown = value if len(value) <= 120 else value[:117] + "..."
            lines.append(f"  version {version}  {key} = {shown}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = console.Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", help="config overrides key=value (e.g. gates=[...])")
    p.add_argument(
        "--config", default=str(DEFAULT_CONFIG), help="gates YAML (default: %(default)s)"
    )
    p.add_argument("--model", help="registered model name")
    p.add_argument("--version", help="candidate version number")
    p.add_argument("--rollback", action="store_true", help="restore the previous champion")
    p.add_argument("--alias", help="alias to move (default: champion)")
    p.add_argument("--dry-run", action="store_true", help="print what would happen, change nothing")
    p.add_argument("--reason", help="reason recorded in the audit tags")
    p.add_argument("--manifest-sha256", help="compare on these test shards")
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else ./runs/mlflow.db)",
    )
    p.add_argument("--experiment", help="experiment of the evaluations (default: clipsr-eval)")
    p.add_argument(
        "--no-verify-artifacts", action="store_true", help="skip the checkpoint download/check"
    )
    return p


def config_from_args(args: argparse.Namespace) -> PromoteConfig:
    cfg = load_promote_config(args.config, list(args.overrides))
    given = {
        "model": args.model,
        "version": args.version,
        "alias": args.alias,
        "reason": args.reason,
        "manifest_sha256": args.manifest_sha256,
        "tracking_uri": args.tracking_uri,
        "experiment": args.experiment,
    }
    cfg = dataclasses.replace(cfg, **{k: v for k, v in given.items() if v is not None})
    cfg.rollback = cfg.rollback or args.rollback
    cfg.dry_run = cfg.dry_run or args.dry_run
    cfg.verify_artifacts = cfg.verify_artifacts and not args.no_verify_artifacts
    cfg.require_target()
    cfg.validate()
    return cfg


@console.command(PROG)
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cfg = config_from_args(args)
    from jobs.tracking import TrackingUnavailable

    try:
        res = run_promote(cfg)
    except (reg.RegistryError, TrackingUnavailable) as err:
        return console.fail(PROG, err, 2)
    print(format_report(res, cfg))
    return res.exit_code


if __name__ == "__main__":
    sys.exit(main())
