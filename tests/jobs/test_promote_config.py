"""The promote config (gates YAML) and the gate arithmetic, without services."""

from __future__ import annotations

import pytest

from clipsr.config_loader import ConfigError
from jobs.promote_config import (
    DEFAULT_CONFIG,
    Gate,
    PromoteConfig,
    apply_gates,
    load_promote_config,
)


def test_default_yaml_loads_with_documented_gates():
    cfg = load_promote_config(DEFAULT_CONFIG)
    assert cfg.alias == "champion" and cfg.experiment == "clipsr-eval" and cfg.verify_artifacts
    rules = {(g.metric, g.rule, g.value, g.required) for g in cfg.gates}
    assert rules == {
        ("psnr", "over_bicubic", 0.0, True),
        ("psnr", "max_drop", 0.05, True),
        ("ssim", "max_drop", 0.005, True),
        ("lpips", "max_rise", 0.01, False),
        ("text_gain_psnr", "min", 0.0, False),
    }
    assert load_promote_config(None).gates == cfg.gates  # the dataclass defaults agree


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("gates=[{metric: psnr, rule: max_dorp, value: 0.1}]", r"gates\[0\]\.rule: expected one"),
        (
            "gates=[{metric: psnr, rule: min, value: 1}, {metric: pnsr, rule: min}]",
            r"gates\[1\]\.metric",
        ),
        ("gates=[{metric: psnr, rule: max_drop, value: -1}]", r"gates\[0\]\.value: max_drop"),
        ("gates=[{metric: psnr, rule: min, value: fast}]", r"gates\[0\]\.value: expected a number"),
        ("gates=[{metric: psnr, rule: min, treshold: 1}]", r"unknown key 'gates\[0\]\.treshold'"),
        ("alias=cham pion", r"alias:"),
        ("version=v3", r"version: a registered model version number"),
    ],
)
def test_bad_config_fails_fast_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_promote_config(DEFAULT_CONFIG, [override])
    assert str(DEFAULT_CONFIG) in str(err.value)


def test_bad_gate_in_a_yaml_file_names_file_and_key(tmp_path):
    path = tmp_path / "gates.yaml"
    path.write_text("gates:\n  - {metric: psnr, rule: max_drop, value: 0.1}\n  - {metric: fid}\n")
    with pytest.raises(ConfigError, match=rf"{path}: gates\[1\]\.metric: unknown metric 'fid'"):
        load_promote_config(path)


def test_target_is_required_and_rollback_takes_no_version():
    with pytest.raises(ConfigError, match="--model NAME"):
        PromoteConfig(version="1").require_target()
    with pytest.raises(ConfigError, match="--version N"):
        PromoteConfig(model="m").require_target()
    PromoteConfig(model="m", rollback=True).require_target()
    with pytest.raises(ConfigError, match="give no version"):
        PromoteConfig(model="m", version="2", rollback=True).validate()


CAND = {4: {"psnr": 24.0, "ssim": 0.700, "text_gain_psnr": 0.3}, 16: {"psnr": 19.0, "ssim": 0.5}}
CHAMP = {4: {"psnr": 24.04, "ssim": 0.706, "lpips": 0.2}, 16: {"psnr": 19.2, "ssim": 0.5}}


def _by(results):
    return {(r.metric, r.scale): r for r in results}


def test_every_gate_and_scale_is_reported_with_values_and_limits():
    gates = [g for g in load_promote_config(DEFAULT_CONFIG).gates if g.rule != "over_bicubic"]
    res = _by(apply_gates(gates, CAND, CHAMP, "cand-run", "champ-run"))
    assert len(res) == 8  # 4 gates x 2 scales: nothing short-circuited
    psnr4 = res[("psnr", 4)]
    assert psnr4.status == "passed" and psnr4.limit == pytest.approx(23.99)
    assert (psnr4.candidate, psnr4.champion) == (24.0, 24.04)
    psnr16 = res[("psnr", 16)]
    assert psnr16.status == "failed" and "x16/psnr 19.0000 is below 19.1500" in psnr16.note
    assert res[("ssim", 4)].status == "failed"  # dropped 0.006 > 0.005
    assert res[("ssim", 16)].status == "passed"
    lpips = res[("lpips", 4)]
    assert lpips.status == "skipped" and "x4/lpips not computed for the candidate" in lpips.note
    assert "--lpips-backbone-weights" in lpips.note and "cand-run" in lpips.note
    assert res[("text_gain_psnr", 4)].status == "passed"
    assert res[("text_gain_psnr", 16)].status == "skipped"


def test_required_missing_metric_fails_and_exact_limit_passes():
    gates = [
        Gate("lpips", "max_rise", 0.01, required=True),
        Gate("x4/ssim", "max_drop", 0.006),
        Gate("x4/psnr", "max", 24.0),
        Gate("x4/psnr", "min", 24.01),
    ]
    res = apply_gates(gates, CAND, CHAMP, "cand-run", "champ-run")
    assert [(r.metric, r.scale, r.status) for r in res] == [
        ("lpips", 4, "failed"),
        ("lpips", 16, "failed"),
        ("x4/ssim", 4, "passed"),  # 0.706 - 0.006 == 0.700 exactly
        ("x4/psnr", 4, "passed"),
        ("x4/psnr", 4, "failed"),
    ]
    assert "x16/lpips not computed for the candidate" in res[1].note


def test_without_champion_only_absolute_gates_apply():
    gates = load_promote_config(DEFAULT_CONFIG).gates + [Gate("x16/psnr", "min", 25.0)]
    res = apply_gates(gates, CAND, None, "cand-run")
    relative = [r for r in res if r.rule in ("max_drop", "max_rise")]
    assert relative and all(r.status == "skipped" and "no champion" in r.note for r in relative)
    assert _by(res)[("x16/psnr", 16)].status == "failed"
    nan = apply_gates([Gate("psnr", "min", 0.0)], {4: {"psnr": float("nan")}}, None)
    assert nan[0].status == "failed" and "not a finite number" in nan[0].note


def test_a_first_champion_must_beat_bicubic():
    """The default gates hold a first champion to its own bicubic baseline (a barely trained
    model must not become the first champion); lpips, lower is better, the other way round."""
    gates = load_promote_config(DEFAULT_CONFIG).gates
    weak = {4: {"psnr": 27.40, "psnr_bicubic": 27.43, "ssim": 0.74, "samples": 18}}
    res = [r for r in apply_gates(gates, weak, None, "cand-run") if r.rule == "over_bicubic"]
    assert [(r.status, r.limit) for r in res] == [("failed", pytest.approx(27.43))]
    assert "x4/psnr 27.4000 is below 27.4300 (bicubic 27.4300 + 0)" in res[0].note
    good = {4: {**weak[4], "psnr": 27.55}}
    assert apply_gates(gates[:1], good, None)[0].status == "passed"
    lpips = [Gate("lpips", "over_bicubic", 0.01)]
    better = {4: {"lpips": 0.20, "lpips_bicubic": 0.30}}
    assert apply_gates(lpips, better, None)[0].status == "passed"
    assert apply_gates(lpips, {4: {"lpips": 0.295, "lpips_bicubic": 0.30}}, None)[0].note
    missing = apply_gates(gates[:1], {4: {"psnr": 30.0}}, None, "cand-run")[0]
    assert missing.status == "failed" and "x4/psnr_bicubic not computed" in missing.note
    with pytest.raises(ConfigError, match=r"gates\[0\]\.metric: over_bicubic needs"):
        load_promote_config(None, ["gates=[{metric: text_gain_psnr, rule: over_bicubic}]"])
