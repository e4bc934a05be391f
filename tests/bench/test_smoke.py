"""The HTTP benchmarks run end to end at a tiny size and print the JSON docs/BENCHMARKS.md reads.

Why: a benchmark is run by hand, rarely, and breaks silently when the API moves under it (a
route renamed, a field added to a request). These runs take seconds: a few records, a fraction
of a second per point. They check the shape of the report and that every request succeeded,
never a time: speed belongs to the benchmark itself, on a machine described beside its figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
from numbers import Real

import pytest

from bench import (
    access,
    checkpoint,
    crypto,
    events,
    instructions,
    read_timeline,
    upload,
    upload_http,
)
from tests.conftest import PgServer


def _number_or_none(value: object) -> bool:
    return value is None or (isinstance(value, Real) and not isinstance(value, bool))


def test_access_reports_each_consumer_count_with_its_baseline(pg_server: PgServer) -> None:
    report = access.run(argparse.Namespace(records=3, seconds=0.6, database_url=pg_server.base_url))
    json.dumps(report)  # what `civis-vault bench access --json` prints
    assert report["benchmark"] == "access"
    assert report["records"] == 3 and report["replicas"] == 4
    assert [p["consumers"] for p in report["points"]] == list(access.CONSUMERS)
    for point in report["points"]:
        for kind in ("access", "baseline"):
            side = point[kind]
            assert side["errors"] == 0, (point["consumers"], kind)
            assert set(side) == {
                "seconds",
                "requests",
                "errors",
                "requests_per_s",
                "p50_ms",
                "p99_ms",
                "cpu_ms_per_request",
            }
            # "postgres" too when the server is the embedded one this run started
            assert {"api", "replicas", "client"} <= set(side["cpu_ms_per_request"])
            assert _number_or_none(side["p50_ms"]) and _number_or_none(side["p99_ms"])
            if side["requests"]:
                assert side["p50_ms"] <= side["p99_ms"]
        for ratio in ("ratio_p50", "ratio_p99", "ratio_requests_per_s"):
            assert _number_or_none(point[ratio])
    # Answers did arrive (how many in so short a window depends on the machine's load).
    assert sum(p["access"]["requests"] for p in report["points"]) > 0
    assert sum(p["baseline"]["requests"] for p in report["points"]) > 0
    bar = report["bar"]
    assert bar["consumers"] == 8 and (bar["p50_ms_max"], bar["p99_ms_max"]) == (20.0, 100.0)
    assert (bar["requests_per_s_min"], bar["api_cpu_ms_max"]) == (200.0, 3.0)
    eight = next(p["access"] for p in report["points"] if p["consumers"] == 8)
    assert bar["requests_per_s"] == eight["requests_per_s"]
    assert bar["api_cpu_ms"] == eight["cpu_ms_per_request"]["api"]
    for met in ("p50_met", "p99_met", "requests_per_s_met", "api_cpu_met"):
        assert isinstance(bar[met], bool)
    # The single-record read: one consumer, one named subject, the ledger's decision included.
    single = report["single_record"]
    assert single["errors"] == 0 and single["requests"] > 0
    assert single["p50_ms_max"] == 5.0 and isinstance(single["p50_met"], bool)
    assert 0 < single["p50_ms"] <= single["p99_ms"]
    # The in-process limit read the same 3 records, and the API's CPU is set beside it.
    limit = report["in_process_limit"]
    assert limit["records_per_answer"] == 3 and limit["answers"] >= 10
    assert limit["cpu_ms_per_answer"]["client"] > 0
    assert set(report["api_cpu_ratio_to_limit"]) == {str(c) for c in access.CONSUMERS}


def test_read_timeline_matches_single_reads_to_their_blocks(pg_server: PgServer) -> None:
    args = argparse.Namespace(records=3, seconds=0.5, database_url=pg_server.base_url)
    report = read_timeline.run(args)
    json.dumps(report)  # what `civis-vault bench read-timeline --json` prints
    assert report["benchmark"] == "read-timeline"
    assert 0 < report["matched"] <= report["reads"]
    assert set(report["read"]) == {f"{p}_ms" for p in read_timeline.READ_PARTS}
    # The stamps of one clock, ordered as the read is: never a part below zero.
    assert all(ms >= 0 for ms in report["read"].values()), report["read"]
    events = {(row["replica"], row["event"]) for row in report["blocks"]}
    # A block commits on 2f+1 COMMITs, each sent once its replica synced its prepared
    # certificate: at least three replicas sync in every matched read, so at least three show
    # (a replica that lagged may have caught up on blocks it fetched), and f+1 of them reply.
    synced = {rid for rid in range(4) if (rid, "fsync end") in events}
    assert len(synced) >= 3, events
    assert (-1, "f+1-th reply") in events


def test_events_reports_credited_events_coupons_and_the_ledger_baseline(
    pg_server: PgServer,
) -> None:
    size = {"devices": 2, "batch": 8, "partners": 2, "coupons": 2, "ledger_seconds": 0.5}
    report = events.run(
        argparse.Namespace(records=4, seconds=0.5, database_url=pg_server.base_url, **size)
    )
    json.dumps(report)  # what `civis-vault bench events --json` prints
    assert report["benchmark"] == "events"
    assert (report["devices"], report["events_per_request"], report["subjects"]) == (2, 8, 4)
    ev = report["events"]
    assert ev["errors"] == 0 and ev["requests"] > 0
    assert ev["events"] == 8 * ev["requests"]
    assert 0 < ev["p50_ms"] <= ev["p99_ms"]
    assert {"api", "replicas", "client"} <= set(ev["cpu_ms_per_event"])
    assert report["ledger_baseline"]["tx_per_s"] > 0
    assert report["ratio_events_per_s_to_ledger_tx_per_s"] > 0
    coupons = report["coupons"]
    assert coupons["partners"] == 2 and coupons["coupons_per_partner"] == 2
    for step in ("redeem", "spend"):
        # every coupon redeemed, then spent once by its partner
        assert (coupons[step]["requests"], coupons[step]["errors"]) == (4, 0), step
        assert coupons[step]["p50_ms"] <= coupons[step]["p99_ms"]
    bar = report["bar"]
    assert bar["events_per_s_min"] == 1000.0 and isinstance(bar["met"], bool)


def test_upload_http_sized_by_bytes_streams_that_body(pg_server: PgServer) -> None:
    """`--gb` sizes the body, not the record count: 0.002 GB is 2,000,000 bytes of NDJSON."""
    report = upload_http.run(
        argparse.Namespace(gb=0.002, repeats=2, database_url=pg_server.base_url)
    )
    json.dumps(report)
    assert report["benchmark"] == "upload-http"
    assert report["body_bytes"] == report["records"] * upload_http.LINE_BYTES
    assert 2_000_000 <= report["body_bytes"] < 2_000_000 + upload_http.LINE_BYTES
    assert 0 < report["small_records"] < report["records"]
    assert report["bar_ratio_max"] == 1.2 and isinstance(report["bar_met"], bool)
    assert report["ratio_http_to_library"] > 0
    # Two HTTP uploads, each between two library uploads: the report's ratio is the higher of
    # the two pairs' (the median of an even count, the one further from the bar), and its
    # figures are that pair's.
    assert report["repeats"] == len(report["ratios_http_to_library"]) == 2
    assert report["ratio_http_to_library"] == max(report["ratios_http_to_library"])
    # The baseline is the mean of a library upload before the HTTP one and one after it.
    library = report["library"]
    runs = (library["before"]["seconds"], library["after"]["seconds"])
    assert min(runs) <= library["seconds"] <= max(runs)
    assert report["ratio_http_to_library"] == pytest.approx(
        report["http"]["seconds"] / library["seconds"], rel=0.02
    )
    # PostgreSQL's CPU is measured on the embedded server only (this one is the suite's).
    embedded = report["server"] == "embedded-postgres"
    for side in (report["http"], library["before"], library["after"]):
        figure = side["postgres_cpu_us_per_record"]
        assert figure > 0 if embedded else figure is None
    assert report["postgres_settled"]["checkpointed"] is True
    peaks = report["server_peak_rss_mb"]
    assert set(peaks) == {"ready", "after_small", "after_full"}
    # VmHWM is a high-water mark: it never goes down.
    assert 0 < peaks["ready"] <= peaks["after_small"] <= peaks["after_full"]
    assert report["client_peak_rss_mb"] > 0


def test_crypto_compares_the_ledger_signatures_with_openssl() -> None:
    """The ledger's Ed25519 (libsodium) against OpenSSL on the same messages, same seed."""
    report = crypto.run(argparse.Namespace(records=50))
    json.dumps(report)
    assert report["operations"] == 50
    for side in ("ledger_libsodium", "baseline_openssl"):
        assert report[side]["sign_us"] > 0 and report[side]["verify_us"] > 0
    assert report["ratio_sign"] > 0 and report["ratio_verify"] > 0


def test_checkpoint_compares_with_serialising_the_whole_state() -> None:
    """Both applications, the checkpoint and its whole-state baseline on the same state."""
    report = checkpoint.run(argparse.Namespace(records=300))
    json.dumps(report)
    assert report["entries"] == 300
    for app in ("kv", "contracts"):
        point = report[app]
        assert point["baseline_whole_state_checkpoint_ms"] > 0 and point["snapshot_bytes"] > 0
        assert point["checkpoint_ms"] >= 0 and point["ratio_checkpoint_to_baseline"] >= 0
    replicated = report["replicated"]
    assert replicated["tx"] == 300 and replicated["cpu_ms_per_tx_at_entries"] > 0


def test_upload_with_one_record_per_subject(
    fresh_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--subjects` sets how many subjects the records name; the raw COPY names the same."""
    monkeypatch.setenv("CIVIS_DATABASE_URL", fresh_database_url)
    report = upload.run(argparse.Namespace(records=1500, subjects=1500, repeats=2))
    json.dumps(report)
    assert report["benchmark"] == "upload"
    assert report["records"] == report["subjects"] == 1500
    assert report["vault"]["records_per_s"] > 0 and report["raw_copy"]["records_per_s"] > 0
    # Two pairs measured; the report's ratio is the lower of them (the median of an even
    # count, the one further from the bar), and its seconds and CPU ratio are that pair's.
    ratios = report["ratios_vault_to_raw_copy"]
    assert report["repeats"] == len(ratios) == 2
    assert report["ratio_vault_to_raw_copy"] == min(ratios) > 0
    copy_s, vault_s = report["raw_copy"]["seconds"], report["vault"]["seconds"]
    rounding = (copy_s / vault_s) * (0.0006 / copy_s + 0.0006 / vault_s) + 0.0006
    assert abs(copy_s / vault_s - report["ratio_vault_to_raw_copy"]) <= rounding
    assert report["bar_met"] == (report["ratio_vault_to_raw_copy"] >= report["bar_ratio_min"])
    cpu = [
        sum(v for v in report[side]["cpu_us_per_record"].values() if v is not None)
        for side in ("raw_copy", "vault")
    ]
    assert report["cpu_ratio_vault_to_raw_copy"] == pytest.approx(cpu[0] / cpu[1], rel=0.02)


@pytest.mark.skipif(shutil.which("callgrind_control") is None, reason="needs valgrind")
def test_instructions_counts_the_api_above_its_in_process_limit(pg_server: PgServer) -> None:
    """The API's answer does all the limit's work and more (HTTP, the ledger's decision), and
    an answer of twenty records more than one of one: counts that were read from the wrong
    dump, or never zeroed, would break one of these. Twenty, because what the API's ledger
    client does per access grows on a loaded machine (by up to ~1.2 M instructions), while
    each record adds ~0.13 M: the answer must outweigh the single read by more than that.
    The upload's counts are per record on both sides (small uploads here: shape only)."""
    report = instructions.run(
        argparse.Namespace(
            records=20, answers=2, upload_sizes=(40, 120), database_url=pg_server.base_url
        )
    )
    json.dumps(report)
    limit = report["in_process_limit"]["instructions_per_answer"]
    api = report["api"]
    assert 0 < limit < api["instructions_per_answer"]
    assert 0 < api["instructions_per_single_record"] < api["instructions_per_answer"]
    # Each record of an upload costs its encryption, its row and its leaf on either side: an
    # upload's count that did not grow with its records would be read from the wrong dump.
    upload = report["upload"]
    assert upload["records"] == [40, 120]
    assert upload["library_instructions_per_record"] > 10_000
    assert upload["api_instructions_per_record"] > 10_000
    ratio = upload["api_instructions_per_record"] / upload["library_instructions_per_record"]
    assert upload["api_ratio_to_library"] == round(ratio, 3)
    assert report["api_ratio_to_limit"] == round(api["instructions_per_answer"] / limit, 3)
