"""The Prometheus alerting rules of deploy/: valid (``promtool check``), unit-tested
(``promtool test rules``), loaded by the shipped Prometheus configuration, and querying only
series the detector exports.

promtool comes from Debian's ``prometheus`` package; CI installs it (.ci/run). Without it
these tests fail, never skip.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from detector.core.alerts import KINDS
from tests.test_compose import COMPOSE, PROMETHEUS, exported_series

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus-alerts.yml"
RULE_TESTS = ROOT / "tests" / "rules" / "prometheus-alerts.test.yml"
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"instance", "job"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool not found: install Debian's prometheus package (apt-get install -y "
            "prometheus); .ci/run installs it"
        )
    return subprocess.run([path, *args], capture_output=True, text=True, timeout=120,
                          check=False)  # fmt: skip


def rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_the_rules_are_valid() -> None:
    out = promtool("check", "rules", str(RULES))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(rules())} rules found" in out.stdout


def test_the_rules_pass_their_unit_tests() -> None:
    out = promtool("test", "rules", str(RULE_TESTS))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout + out.stderr


def test_prometheus_loads_the_rules_as_compose_mounts_them() -> None:
    out = promtool("check", "config", str(PROMETHEUS))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(rules())} rules found" in out.stdout + out.stderr
    config = yaml.safe_load(PROMETHEUS.read_text())
    [rule_file] = config["rule_files"]
    volumes = yaml.safe_load(COMPOSE.read_text())["services"]["prometheus"]["volumes"]
    assert f"./deploy/{rule_file}:/etc/prometheus/{rule_file}:ro" in volumes
    assert (PROMETHEUS.parent / rule_file).resolve() == RULES


def test_every_rule_queries_exported_series_and_has_a_firing_unit_test() -> None:
    series = exported_series()
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", ())
        if case.get("exp_alerts")
    }
    quiet = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", ())
        if not case.get("exp_alerts")
    }
    wanted = {"DetectorWorkerDown", "DetectorLagGrowing", "DetectorDeadLettersRising",
              "DetectorAlertStorm"}  # fmt: skip
    names = {r["alert"] for r in rules()}
    assert wanted <= names
    assert fired == names and quiet == names  # each rule seen firing and seen quiet
    for rule in rules():
        expr, name = rule["expr"], rule["alert"]
        queried = set(re.findall(r"\b(detector_[a-z0-9_]+)", expr))
        assert queried or re.search(r"\bup\{", expr), name
        assert queried <= set(series), f"{name}: {sorted(queried - set(series))} not exported"
        labels = set().union(*(series[n] for n in queried)) | TARGET_LABELS
        used = set(re.findall(r"by \(([^)]*)\)", expr)) | set(re.findall(r"(\w+)=~?\"", expr))
        for label in (x.strip() for group in used for x in group.split(",")):
            assert label in labels, f"{name}: no label {label!r} on {sorted(queried)}"
        for matched in re.findall(r'kind="(\w+)"', expr):
            assert matched in KINDS, f"{name}: no alert kind {matched!r}"
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
