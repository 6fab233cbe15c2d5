"""lab.bench.report on hand-made bench documents: sizes, the tables' ratios and loss marks, missing
cells, the sentences about crossovers, and that the plots are real PNG files."""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from lab import LabError
from lab.bench import report

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DEFAULT_SIZES = [1, 64, 256, 1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20]


def cell(transport: str, mode: str, size: int, rate: float | None, *, kernel: str = "host",
         pinning: str = "same-cpu", p50_us: float | None = None, errors: list[str] | None = None) -> dict:
    return {"kernel": kernel, "transport": transport, "mode": mode, "size": size, "pinning": pinning,
            "rate": rate, "rate_min": rate, "rate_max": rate, "runs": 3,
            "p50_us": p50_us if mode == "rr" else None, "p99_us": None,
            "cpu_ns_per_byte": None if rate is None else 1.5, "errors": errors or []}


def small_doc() -> dict:
    """One kernel, one pinning: the redirect wins rr 64 B, loses stream 1 KiB, ties stream 4 KiB,
    has no good run for stream 64 KiB, and there is no AF_UNIX cell for rr 64 B."""
    return {"results": [
        cell("tcp", "rr", 64, 100_000, p50_us=10.0),
        cell("redirect", "rr", 64, 162_000, p50_us=6.0),
        cell("tcp", "stream", 1024, 2e9),
        cell("redirect", "stream", 1024, 1e9),
        cell("unix", "stream", 1024, 4e9),
        cell("tcp", "stream", 4096, 3e9),
        cell("redirect", "stream", 4096, 3e9),
        cell("tcp", "stream", 65536, 5e9),
        cell("redirect", "stream", 65536, None, errors=["sockbench: timed out after 5 s"]),
        cell("unix", "stream", 65536, 9e9),
    ], "peers": [], "bpf_stats": {}, "meta": {"accel": {"host": "native"}}}


def table_rows(table: str) -> dict[tuple[str, str], list[str]]:
    """(mode, size) -> the row's cells; cells are two or more spaces apart, so "183k rt/s" and
    "0.50x <" stay whole."""
    rows = {}
    for line in table.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells[0] in ("rr", "stream"):
            rows[(cells[0], cells[1])] = cells
    return rows


# ---- sizes and figures ----

@pytest.mark.parametrize("size, text", [(1, "1"), (64, "64"), (1024, "1K"), (65536, "64K"),
                                        (1 << 20, "1M"), (1536, "1536"), (3 << 20, "3M")])
def test_format_size(size, text):
    assert report.format_size(size) == text


def test_parse_sizes_reads_the_default_list_and_round_trips():
    sizes = report.parse_sizes("1,64,256,1K,4K,16K,64K,256K,1M")
    assert sizes == DEFAULT_SIZES
    odd = [1536, 3 << 20, 7]
    assert report.parse_sizes(",".join(report.format_size(s) for s in sizes + odd)) == sizes + odd


def test_parse_sizes_is_case_insensitive_and_ignores_spaces():
    assert report.parse_sizes(" 4k, 1m ,64M") == [4096, 1 << 20, 64 << 20]


@pytest.mark.parametrize("text, bad", [("1,abc", "abc"), ("0", "0"), ("-1", "-1"), ("65M", "65M"),
                                       ("1.5K", "1.5K"), ("1,,2", "''"), ("1G", "1G"),
                                       ("1K,1024", "1024")])
def test_parse_sizes_refuses_and_names_the_bad_item(text, bad):
    with pytest.raises(LabError, match=re.escape(bad)):
        report.parse_sizes(text)


@pytest.mark.parametrize("value, mode, text", [
    (183_400, "rr", "183k rt/s"), (999_700, "rr", "1M rt/s"), (950, "rr", "950 rt/s"),
    (2.41e9, "stream", "2.41 GB/s"), (512e6, "stream", "512 MB/s"), (512, "stream", "512 B/s"),
    (None, "rr", "-"), (None, "stream", "-")])
def test_format_rate(value, mode, text):
    assert report.format_rate(value, mode) == text


# ---- tables ----

def test_target_table_ratios_and_loss_marks():
    rows = table_rows(report.target_table(small_doc(), "host"))
    rr, stream = rows[("rr", "64")], rows[("stream", "1K")]
    assert rr[:6] == ["rr", "64", "100k rt/s", "162k rt/s", "-", "1.62x"]
    assert stream[2:7] == ["2 GB/s", "1 GB/s", "4 GB/s", "0.50x <", "0.25x"]
    assert rr[7] == "10.0/6.00"  # p50 tcp/redirect
    assert rows[("stream", "4K")][5] == "1.00x"  # a tie is no loss
    assert [key for key, cells in rows.items() if cells[5].endswith("<")] == [("stream", "1K")]


def test_target_table_shows_missing_figures_as_dashes_and_says_why():
    table = report.target_table(small_doc(), "host")
    failed = table_rows(table)[("stream", "64K")]
    assert failed[2:7] == ["5 GB/s", "-", "9 GB/s", "-", "-"]
    assert "redirect stream 64K same-cpu: 1 failed run(s), first: sockbench: timed out after 5 s" in table
    assert "two-cpus" not in table  # no block for a pinning without cells
    assert report.target_table(small_doc(), "6.1") == "no results for kernel 6.1"


def test_target_table_fits_110_columns_with_every_size_and_pinning():
    doc = {"results": [cell(t, mode, size, 12_345_678.9, pinning=pinning, p50_us=12_345.6)
                       for t in report.TRANSPORTS for mode in ("rr", "stream") for size in DEFAULT_SIZES
                       for pinning in report.PINNINGS],
           "meta": {"accel": {"host": "tcg"}}}
    table = report.target_table(doc, "host")
    assert report.TCG_NOTE in table
    assert max(len(line) for line in table.splitlines()) <= 110


def test_peers_table_puts_better_above_one_for_every_metric():
    def peer(tool, metric, transport, value, unit, error=None):
        return {"kernel": "host", "tool": tool, "transport": transport, "metric": metric, "value": value,
                "unit": unit, "detail": "-l 128K", "error": error}
    doc = {"peers": [peer("sockperf-pingpong", "latency", "tcp", 12.0, "us"),
                     peer("sockperf-pingpong", "latency", "redirect", 8.0, "us"),
                     peer("iperf3", "throughput", "tcp", 4e9, "bytes/s"),
                     peer("iperf3", "throughput", "redirect", 2e9, "bytes/s"),
                     peer("redis-benchmark", "requests", "tcp", 150_000, "requests/s"),
                     peer("redis-benchmark", "requests", "redirect", None, "requests/s",
                          error="redis-server did not start")]}
    table = report.peers_table(doc, "host")
    rows = {cells[0]: cells for cells in (re.split(r"\s{2,}", line) for line in table.splitlines())}
    assert rows["sockperf-pingpong"][2:5] == ["12.0 us", "8.00 us", "1.50x"]
    assert rows["iperf3"][2:5] == ["4 GB/s", "2 GB/s", "0.50x <"]
    assert rows["redis-benchmark"][2:5] == ["150k req/s", "error", "-"]
    assert "redis-benchmark requests redirect: redis-server did not start" in table
    assert report.peers_table(doc, "6.1") == "no peer measurements for kernel 6.1"


def test_peers_table_keeps_every_measurement_of_a_tool():
    def peer(detail, transport, value):
        return {"kernel": "host", "tool": "iperf3", "transport": transport, "metric": "throughput",
                "value": value, "unit": "bytes/s", "detail": detail, "error": None}
    doc = {"peers": [peer("iperf3 -l 1K", "tcp", 4e8), peer("iperf3 -l 1K", "redirect", 2e8),
                     peer("iperf3 -l 128K", "tcp", 4e9), peer("iperf3 -l 128K", "redirect", 8e9)]}
    lines = [line for line in report.peers_table(doc, "host").splitlines() if line.startswith("iperf3")]
    assert [re.split(r"\s{2,}", line)[4:6] for line in lines] == [["0.50x <", "iperf3 -l 1K"],
                                                                   ["2.00x", "iperf3 -l 128K"]]


def test_bpf_stats_table_computes_a_missing_average():
    doc = {"bpf_stats": {"host": {"sredir_msg": {"run_cnt": 10, "run_time_ns": 500, "avg_ns": 50.0},
                                  "sredir_ops": {"run_cnt": 4, "run_time_ns": 1000},
                                  "sredir_idle": {"run_cnt": 0, "run_time_ns": 0, "avg_ns": None}}}}
    rows = [line.split() for line in report.bpf_stats_table(doc, "host").splitlines()]
    assert rows == [["program", "run_cnt", "avg", "ns/run"], ["sredir_idle", "0", "-"],
                    ["sredir_msg", "10", "50.0"], ["sredir_ops", "4", "250"]]


def test_write_json_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "bench.json"
    path.write_text("old")
    report.write_json(small_doc(), path)
    assert json.loads(path.read_text()) == small_doc()
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]


# ---- crossovers ----

def crossover_doc() -> dict:
    """stream on one CPU: win at 64 B, losses at 256 B and 1 KiB, a tie at 4 KiB, win at 64 KiB;
    rr on two CPUs: wins only; rr on one CPU: no TCP figure, so no ratio at all."""
    ratios = {64: 1.3, 256: 0.8, 1024: 0.6, 4096: 1.0, 65536: 1.7}
    results = [c for size, ratio in ratios.items()
               for c in (cell("tcp", "stream", size, 1e9), cell("redirect", "stream", size, 1e9 * ratio))]
    results += [cell("tcp", "rr", size, 1e5, pinning="two-cpus", p50_us=10.0) for size in (1, 64)]
    results += [cell("redirect", "rr", 1, 1.5e5, pinning="two-cpus", p50_us=6.7),
                cell("redirect", "rr", 64, 2e5, pinning="two-cpus", p50_us=5.0),
                cell("tcp", "rr", 64, None), cell("redirect", "rr", 64, 2e5)]
    return {"results": results}


def test_crossovers_lists_losses_and_wins_in_size_order():
    found = {(c["mode"], c["pinning"]): c for c in report.crossovers(crossover_doc(), "host")}
    assert set(found) == {("stream", "same-cpu"), ("rr", "two-cpus")}
    stream = found[("stream", "same-cpu")]
    assert stream["sizes"] == [64, 256, 1024, 4096, 65536]
    assert stream["losses"] == [256, 1024]
    assert stream["wins"] == [64, 65536]
    assert found[("rr", "two-cpus")]["losses"] == []


def test_summary_lines_say_where_the_redirect_loses():
    assert report.summary_lines(crossover_doc(), "host") == [
        "the redirect wins for request/response of every size measured on two CPUs (1.50x - 2.00x)",
        "the redirect loses for stream writes of 256 B - 1 KiB on one CPU (down to 0.60x); "
        "it wins for 64 B and 64 KiB (up to 1.70x)"]


# ---- plots ----

def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's header, after checking the magic bytes."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert len(data) > 10_000, f"{path} is suspiciously small ({len(data)} bytes)"
    return struct.unpack(">II", data[16:24])


def two_kernel_doc() -> dict:
    doc = crossover_doc()
    doc["results"] += [dict(c, kernel="6.1", rate=c["rate"] and c["rate"] / 10) for c in doc["results"]]
    doc["results"].append(cell("unix", "rr", 64, 1e5, p50_us=9.0))
    doc["meta"] = {"accel": {"host": "native", "6.1": "tcg"}}
    return doc


def test_plot_target_writes_a_png_per_kernel_with_a_row_per_pinning(tmp_path):
    doc = two_kernel_doc()
    both = report.plot_target(doc, "6.1", tmp_path)
    assert both == tmp_path / "bench-6.1.png"
    one_pinning = report.plot_target({"results": small_doc()["results"]}, "host", tmp_path / "one")
    assert one_pinning == tmp_path / "one" / "bench-host.png"
    (width, height), (_, height_one) = png_size(both), png_size(one_pinning)
    assert width > 800 and height > height_one  # the pinning with no data got no row
    with pytest.raises(LabError, match="no results for kernel 5.10"):
        report.plot_target(doc, "5.10", tmp_path)


def test_plot_kernels_compares_kernels_and_needs_two(tmp_path):
    path = report.plot_kernels(two_kernel_doc(), tmp_path)
    assert path == tmp_path / "bench-kernels.png"
    png_size(path)
    assert report.plot_kernels(crossover_doc(), tmp_path / "single") is None
    assert not (tmp_path / "single").exists()


def test_importing_the_report_needs_no_matplotlib():
    code = "import sys, lab.bench.report; assert 'matplotlib' not in sys.modules, 'matplotlib imported'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


# ---- the bench's accounting: every byte of a redirect's runs went through its program ----

def _reading(variant: str, redirected: int, missed: int = 0, guard: dict | None = None) -> dict:
    from lab.bpf import keys
    counters = dict.fromkeys(keys.COUNTER_FIELDS, 0) | {"bytes_redirected": redirected, "msgs_missed": missed}
    return {"variant": variant, "counters": counters,
            "guard": None if guard is None else dict.fromkeys(keys.GUARD_FIELDS, 0) | guard}


def test_guarded_runs_are_carried_by_redirect_plus_guard_tcp_bytes():
    from lab.bench.transports import check_redirect_carried
    before = _reading("guarded", 0, guard={})
    after = _reading("guarded", 700, guard={"bytes_backpressure": 200, "bytes_in_order": 100})
    check_redirect_carried(before, after, 1000, "host")
    with pytest.raises(LabError, match="100 sent over TCP by its guard|300 sent over TCP"):
        check_redirect_carried(before, after, 1100, "host")


def test_production_runs_must_all_be_redirected():
    from lab.bench.transports import check_redirect_carried
    check_redirect_carried(_reading("production", 0), _reading("production", 1000), 1000, "host")
    with pytest.raises(LabError, match="1 messages missed"):
        check_redirect_carried(_reading("production", 0), _reading("production", 1000, missed=1), 1000, "host")
