"""`axm ingest`, `axm search` and `axm reindex`, locally on a data directory and against a running service."""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import httpx
import pytest
from service_helpers import LiveServer

from service.cli import main

pytestmark = pytest.mark.data

CROPS = ("0107001.png", "0107003.png", "0109002.png")
# A row of the printed ranking: rank, score, camera, time, id.
TABLE_ROW = re.compile(r"^\s*\d+\s+-?\d+\.\d{4}\s")


@pytest.fixture
def crop_folder(tmp_path: Path, pedes_root: Path) -> Path:
    """A folder of three real crops in two camera subfolders, and one file of random bytes."""
    folder = tmp_path / "crops"
    for index, name in enumerate(CROPS):
        target = folder / f"cam{index % 2}" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pedes_root / "imgs" / "CUHK01" / name, target)
    (folder / "cam0" / "broken.png").write_bytes(random.Random(0).randbytes(2048))
    return folder


def test_ingest_search_reindex_locally(
    tmp_path: Path,
    crop_folder: Path,
    small_checkpoint: Path,
    other_checkpoint: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data_dir = tmp_path / "gallery"
    store_options = ["--data-dir", str(data_dir), "--checkpoint", str(small_checkpoint)]

    status = main(
        [
            "ingest",
            str(crop_folder),
            "--camera-id",
            "cli",
            "--captured-at",
            "2026-12-01T10:00:00Z",
            *store_options,
        ]
    )
    output = capsys.readouterr().out
    assert status == 1
    assert "3 created, 0 updated, 1 failed" in output
    assert "broken.png: unsupported_image" in output

    status = main(["search", "a man in a grey hoodie", "--top-k", "2", "--camera", "cli", *store_options])
    output = capsys.readouterr().out
    assert status == 0
    table_rows = [line.split() for line in output.splitlines() if TABLE_ROW.match(line)]
    assert [row[0] for row in table_rows] == ["1", "2"]
    assert {row[-1] for row in table_rows} <= {"cam0/0107001.png", "cam1/0107003.png", "cam0/0109002.png"}

    reindex = ["reindex", "--checkpoint", str(other_checkpoint), "--from-checkpoint", str(small_checkpoint)]
    status = main([*reindex, "--data-dir", str(data_dir)])
    assert status == 0
    assert "re-embedded 3 crops" in capsys.readouterr().out

    status = main(["search", "a man", "--data-dir", str(data_dir), "--checkpoint", str(small_checkpoint)])
    assert status == 2
    assert "axm reindex" in capsys.readouterr().err
    status = main(["search", "a man", "--data-dir", str(data_dir), "--checkpoint", str(other_checkpoint)])
    assert status == 0
    assert "3 results" in capsys.readouterr().out


def test_ingest_from_csv(
    tmp_path: Path, crop_folder: Path, small_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = crop_folder / "crops.csv"
    table.write_text(
        "path,id,camera_id,captured_at\n"
        "cam0/0107001.png,site1/track1,gate,2026-12-01T10:00:00Z\n"
        "cam1/0107003.png,,,\n",
        encoding="utf-8",
    )
    data_dir = tmp_path / "gallery"
    status = main(
        [
            "ingest",
            str(table),
            "--camera-id",
            "default-cam",
            "--data-dir",
            str(data_dir),
            "--checkpoint",
            str(small_checkpoint),
        ]
    )
    assert status == 0
    assert "2 created, 0 updated, 0 failed" in capsys.readouterr().out

    status = main(
        [
            "search",
            "a person",
            "--camera",
            "gate",
            "--data-dir",
            str(data_dir),
            "--checkpoint",
            str(small_checkpoint),
        ]
    )
    output = capsys.readouterr().out
    assert status == 0
    assert "site1/track1" in output
    assert "cam1/0107003.png" not in output


def test_ingest_rejects_naive_time(crop_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["ingest", str(crop_folder), "--captured-at", "2026-12-01T10:00:00"])
    assert status == 2
    assert "timezone" in capsys.readouterr().err


def test_ingest_and_search_over_http(
    live_server: LiveServer, crop_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["ingest", str(crop_folder), "--url", live_server.url, "--camera-id", "cli-http"])
    output = capsys.readouterr().out
    assert status == 1
    assert "failed files:" in output
    assert "broken.png: unsupported_image" in output
    stats = httpx.get(f"{live_server.url}/gallery/stats").json()
    assert {"camera_id": "cli-http", "count": 3} in stats["cameras"]

    status = main(
        ["search", "a man in a grey hoodie", "--url", live_server.url, "--camera", "cli-http", "--top-k", "3"]
    )
    output = capsys.readouterr().out
    assert status == 0
    assert "cam0/0107001.png" in output
    assert "3 results" in output


def test_search_over_http_reports_errors(live_server: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["search", "   ", "--url", live_server.url])
    assert status == 2
    assert "422" in capsys.readouterr().err
