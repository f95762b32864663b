"""``repq report rehearsal`` on hand-made results: every benchmarked job with Snakemake's
measurements, the peak CUDA memory a job recorded, the ONNX sizes and the wall time."""

from __future__ import annotations

import json
from pathlib import Path

from repq.report.rehearsal import write_rehearsal

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _benchmark(results: Path, relative: str, seconds: str, rss: str, cpu: str) -> None:
    path = results / "benchmarks" / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + f"{seconds}\t0:00:01\t{rss}\t1\t1\t1\t0\t0\t50\t{cpu}\n")


def test_the_rehearsal_table_lists_each_job_its_memory_and_the_onnx_sizes(tmp_path):
    results = tmp_path / "rehearse"
    _benchmark(results, "prepare_synthetic/data.tsv", "21.5", "300.2", "19.0")
    _benchmark(results, "train/repvgg_a0/base/seed0/qat-repq-4.tsv", "9.25", "1186.4", "12.3")
    _benchmark(results, "evaluate/repvgg_a0/base/seed0.tsv", "7.0", "NA", "8.0")
    run = results / "runs" / "repvgg_a0" / "base" / "seed0" / "qat-repq-4"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"cuda_max_allocated_mb": 5120.5}))
    (run / "model.onnx").write_bytes(b"\0" * (3 * 2**20 // 2))
    (results / "wall_seconds").write_text("762\n")
    text = write_rehearsal(results).read_text()
    summary = json.loads((results / "tables" / "rehearsal.json").read_text())
    assert [(r["rule"], r["job"]) for r in summary["jobs"]] == [
        ("evaluate", "repvgg_a0/base/seed0"),
        ("prepare_synthetic", "data"),
        ("train", "repvgg_a0/base/seed0/qat-repq-4"),
    ]
    evaluate, data, train = summary["jobs"]
    assert evaluate["max_rss_mib"] is None and evaluate["cuda_max_allocated_mib"] is None
    assert data["seconds"] == 21.5 and data["cuda_max_allocated_mib"] is None
    assert train["cuda_max_allocated_mib"] == 5120.5 and train["cpu_seconds"] == 12.3
    assert summary["onnx_mib"] == {"repvgg_a0/base/seed0/qat-repq-4": 1.5}
    assert text.startswith("3 benchmarked jobs; the whole DAG took 12.7 min of wall time.")
    assert "| train | repvgg_a0/base/seed0/qat-repq-4 | 9.2 | 1186 | 12.3 | 5120 |" in text
    assert "| evaluate | repvgg_a0/base/seed0 | 7.0 |  | 8.0 |  |" in text
    assert "| repvgg_a0/base/seed0/qat-repq-4/model.onnx | 1.50 |" in text
