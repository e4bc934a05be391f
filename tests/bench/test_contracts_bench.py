"""`civis-vault bench contracts` runs end to end at a small size and reports each point with
its ratio to the baseline measured in the same run, and a profile. It checks the report's shape
and that every access granted every consenting subject, never a time."""

from __future__ import annotations

import argparse
import json

from bench import contracts


def test_contracts_reports_each_point_against_the_one_subject_baseline() -> None:
    report = contracts.run(argparse.Namespace(records=150))
    json.dumps(report)  # what `civis-vault bench contracts --json` prints
    assert report["benchmark"] == "contracts"
    points = {"open_100": 100, "named_100": 100, "open_150": 150}
    assert report["baseline_open_1"]["granted"] == 1
    for name, subjects in points.items():
        point = report[name]
        assert point["subjects"] == point["granted"] == subjects, name
        for key in ("contract_cpu_ms", "app_cpu_ms"):
            ratio = point[f"ratio_{key}_to_baseline"]
            assert isinstance(ratio, float) and ratio > 0, (name, key)
            assert point[key] > 0, (name, key)
        assert point["contract_cpu_ms"] <= point["app_cpu_ms"], name  # the rule is in the app
    assert isinstance(report["bar"]["met"], bool)
    profile = report["profile_open_100"]
    assert any("access.py" in line for line in profile["cumulative"]) and profile["own"]
