"""Markdown tables of the service benchmark, from the figures `bench_service.py` collects."""

from __future__ import annotations

import argparse
from typing import Any

from bench_service_load import IngestRun, percentile_ms
from bench_service_model import IngestProfile
from bench_service_server import HistogramDelta

MIB = 1024 * 1024
# Resident memory the service should stay under after the ingest and the searches.
RSS_TARGET_BYTES = 1536 * MIB
# HTTP ingest should reach this fraction of the model's batch throughput.
INGEST_RATIO_TARGET = 0.8


def mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value / MIB:,.0f}"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def report_cold_starts(results: dict[str, Any]) -> str:
    rows = [
        [entry["run"], f"{entry['health_s']:.1f}", f"{entry['ready_s']:.1f}"]
        for entry in results["cold_starts"]
    ]
    return "### Cold start\n\n" + table(
        ["start", "process start → /health 200 (s)", "process start → /ready 200 (s)"], rows
    )


def report_ingest(results: dict[str, Any], args: argparse.Namespace) -> str:
    ingest: IngestRun = results["ingest"]
    profile: IngestProfile = results["profile"]
    ratio = ingest.crops_per_s / profile.model_crops_per_s
    rows = [
        [
            f"model batch: `decode_image` + `Encoder.encode_images`, batch {args.batch_size}, in the benchmark "
            f"process with {results['in_process_threads']} torch threads",
            f"{profile.model_s:.1f}",
            f"{profile.model_crops_per_s:.1f}",
            "100%",
        ],
        [
            "in-process ingest: decode, embed, sha256, `upsert` into a FAISS gallery",
            f"{profile.pipeline_s:.1f}",
            f"{profile.pipeline_crops_per_s:.1f}",
            f"{profile.pipeline_crops_per_s / profile.model_crops_per_s:.0%}",
        ],
        [
            f"HTTP POST /gallery, {args.batch_size} files per request, one client",
            f"{ingest.seconds:.1f}",
            f"{ingest.crops_per_s:.1f}",
            f"**{ratio:.0%}** (target ≥ {INGEST_RATIO_TARGET:.0%})",
        ],
    ]
    text = "### Ingest throughput\n\n" + table(
        ["path", f"seconds for {ingest.crops} crops", "crops/s", "share of the model's batch throughput"],
        rows,
    )
    text += (
        f"\n\nEach batch ran in-process and over HTTP back to back, in alternating order, so both paths saw "
        f"the same machine load. HTTP ingest: {ingest.created} created, {ingest.updated} updated, "
        f"{ingest.rejected} rejected; request latency p50 {percentile_ms(ingest.batch_seconds, 50):.0f} ms, "
        f"p95 {percentile_ms(ingest.batch_seconds, 95):.0f} ms per {args.batch_size}-file request.\n\n"
    )
    return text + report_ingest_stages(results)


def report_ingest_stages(results: dict[str, Any]) -> str:
    """Tabulate where ingest time goes: in-process stage by stage, against the service's own timers."""
    ingest: IngestRun = results["ingest"]
    profile: IngestProfile = results["profile"]
    request: HistogramDelta = results["ingest_metrics"]["request"]
    encode: HistogramDelta = results["ingest_metrics"]["encode"]
    per_thousand = 1000.0 / ingest.crops

    def seconds(value: float) -> str:
        return f"{value * per_thousand:.1f}"

    not_separate = "not timed alone"
    rows = [
        ["decode (`decode_image`)", seconds(profile.decode_s), not_separate],
        [
            'forward passes (`Encoder.encode_images`; service: `axm_encode_seconds{modality="image"}`)',
            seconds(profile.encode_s),
            seconds(encode.total),
        ],
        [
            "sha256 ids, then `upsert` (crop files with fsync, SQLite commit, FAISS add)",
            seconds(profile.hash_s + profile.upsert_s),
            not_separate,
        ],
        [
            "all but the forward passes (service: POST /gallery time minus forward passes, so multipart "
            "parsing and the response too)",
            seconds(profile.decode_s + profile.hash_s + profile.upsert_s),
            seconds(request.total - encode.total),
        ],
        [
            "client and transport (wall time minus the service's request time)",
            "0",
            seconds(ingest.seconds - request.total),
        ],
        ["total", seconds(profile.pipeline_s), seconds(ingest.seconds)],
    ]
    return "Ingest time by stage, seconds per 1,000 crops:\n\n" + table(
        ["stage", "in-process", "over HTTP (service timers)"], rows
    )


def report_search(results: dict[str, Any]) -> str:
    rows = []
    for run, _ in results["search"]:
        rows.append(
            [
                str(run.clients),
                str(len(run.latencies_s)),
                f"{percentile_ms(run.latencies_s, 50):.0f}",
                f"{percentile_ms(run.latencies_s, 95):.0f}",
                f"{percentile_ms(run.latencies_s, 99):.0f}",
                f"{sum(run.latencies_s) / max(len(run.latencies_s), 1) * 1000:.0f}",
                f"{run.requests_per_s:.1f}",
                f"{percentile_ms([t / 1000 for t in run.took_ms], 50):.0f}",
                str(len(run.errors)),
            ]
        )
    header = [
        "clients",
        "requests",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "mean ms",
        "searches/s",
        "service `took_ms` p50",
        "errors",
    ]
    return "### Search latency (gallery of the ingested crops)\n\n" + table(header, rows)


def report_breakdown(results: dict[str, Any]) -> str:
    """Split the one-client search latency into text encode, gallery search and the rest."""
    one_client = [(run, level) for run, level in results["search"] if run.clients == 1]
    run, histograms = one_client[0] if one_client else results["search"][0]

    request: HistogramDelta = histograms["request"]
    encode: HistogramDelta = histograms["encode"]
    search: HistogramDelta = histograms["search"]
    client_mean = sum(run.latencies_s) / len(run.latencies_s)
    rest_server = request.mean - encode.mean - search.mean
    rest_client = client_mean - request.mean

    rows = [
        [
            "client-observed latency",
            ms(client_mean),
            f"{percentile_ms(run.latencies_s, 50):.1f} (exact)",
            "100%",
        ],
        [
            'text encode (`axm_encode_seconds{modality="text"}`)',
            ms(encode.mean),
            ms(encode.quantile(0.5)),
            f"{encode.mean / client_mean:.0%}",
        ],
        [
            "gallery search: FAISS and SQLite metadata (`axm_search_seconds`)",
            ms(search.mean),
            ms(search.quantile(0.5)),
            f"{search.mean / client_mean:.0%}",
        ],
        [
            "rest inside the service: routing, validation, worker thread, JSON",
            ms(rest_server),
            "",
            f"{rest_server / client_mean:.0%}",
        ],
        [
            "rest outside the handler: HTTP parsing, transport, client",
            ms(rest_client),
            "",
            f"{rest_client / client_mean:.0%}",
        ],
        [
            "service request time (`axm_http_request_duration_seconds`, POST /search)",
            ms(request.mean),
            ms(request.quantile(0.5)),
            f"{request.mean / client_mean:.0%}",
        ],
    ]
    text = (
        f"### Where one-client search time goes ({run.clients} client, {len(run.latencies_s)} requests, from "
        "/metrics)\n\n"
    )
    text += table(["part", "mean ms", "p50 ms (from histogram buckets)", "share of client mean"], rows)
    dominant = "dominates" if encode.mean > 0.5 * client_mean else "does not dominate"
    return (
        text
        + f"\n\nThe text encoder {dominant} one-client latency ({encode.mean / client_mean:.0%} of the mean)."
    )


def report_memory(results: dict[str, Any]) -> str:
    rows = []
    for moment, rss, peak in results["memory"]:
        rows.append([moment, mb(rss), mb(peak)])
    final = results["memory"][-1][1]
    verdict = "under" if final < RSS_TARGET_BYTES else "OVER"
    text = "### Resident memory of the service process\n\n" + table(
        ["moment", "RSS (MiB)", "peak RSS, VmHWM (MiB)"], rows
    )
    return text + f"\n\nFinal RSS {mb(final)} MiB: {verdict} the 1.5 GiB target."


def report_scale(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = []
    for row in rows:
        write, run, histograms = row["write"], row["run"], row["histograms"]
        write_note = (
            f"{write.added:,} added at {write.items_per_s:,.0f} items/s" if write.added else "already written"
        )
        if write.count < row["target"]:
            write_note += f"; write budget ended before {row['target']:,}"
        lines.append(
            [
                f"{write.count:,}",
                write_note,
                f"{row['ready_s']:.1f}",
                f"{percentile_ms(run.latencies_s, 50):.0f}",
                f"{percentile_ms(run.latencies_s, 95):.0f}",
                f"{percentile_ms(run.latencies_s, 99):.0f}",
                ms(histograms["search"].mean),
                ms(histograms["encode"].mean),
                mb(row["rss"]),
                row["load_average"],
            ]
        )
    header = [
        "gallery items",
        "synthetic write through `index`",
        "start → ready (s)",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "gallery search mean ms",
        "text encode mean ms",
        "RSS (MiB)",
        "load avg",
    ]
    return (
        f"### Search latency versus gallery size (synthetic embeddings, index spec {args.index_spec}, one client, "
        f"{args.scale_requests} requests per size)\n\n" + table(header, lines)
    )
