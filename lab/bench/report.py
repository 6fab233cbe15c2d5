"""Tables, plots and sentences from the document ``sockredir-lab bench redirect`` writes.

Everything here reads the bench's JSON document (a dict: ``results``, ``peers``, ``bpf_stats``,
``meta``) and never measures anything, so a saved document can be presented again. Figures are
compared as ratios against plain TCP because the absolute figures of a TCG guest mean little, and
a ratio below 1.0 (the redirect is slower) is marked wherever it appears: the losses are the point.

matplotlib is imported only by the plotting functions, so the tables work where it is missing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable

from lab import LabError
from lab.cache import atomic_file, atomic_write

TRANSPORTS = ("tcp", "redirect", "unix")
TRANSPORT_TITLES = {"tcp": "TCP", "redirect": "redirect", "unix": "UNIX", "guarded": "guard"}
# Known pinnings first, in the order a reader compares them; others follow sorted.
PINNINGS = ("same-cpu", "two-cpus")
PINNING_WORDS = {"same-cpu": "on one CPU", "two-cpus": "on two CPUs"}
MODE_WORDS = {"rr": "request/response", "stream": "stream writes"}
# Transport -> (legend label, colour, marker): the same look in every plot.
TRANSPORT_STYLE = {"tcp": ("plain TCP", "grey", "o"),
                   "redirect": ("redirect", "tab:blue", "s"),
                   "unix": ("AF_UNIX", "tab:green", "^"),
                   "guarded": ("guarded redirect", "tab:orange", "D")}
TCG_NOTE = "TCG guest: compare ratios, not absolute figures"
LOSS_MARK = " <"
MAX_SIZE = 64 << 20  # the bench's buffers are this size at most
SIZE_UNITS = (("M", 1 << 20), ("K", 1 << 10))
SIZE_RE = re.compile(r"(\d+)([km]?)", re.IGNORECASE)


# ---- sizes and figures ----

def format_size(n: int) -> str:
    """1 -> "1", 1024 -> "1K", 1048576 -> "1M"; a size that is no whole multiple stays in bytes,
    so that ``parse_sizes`` reads back exactly what was printed."""
    for suffix, unit in SIZE_UNITS:
        if n >= unit and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


def parse_sizes(text: str) -> list[int]:
    """Message sizes from a comma-separated list such as "1,64,1K,4k,1M" (binary multiples),
    in the order given."""
    sizes: list[int] = []
    for item in (part.strip() for part in text.split(",")):
        match = SIZE_RE.fullmatch(item)
        if not match:
            raise LabError(f"message size {item!r} is not a size: use bytes with an optional K or M "
                           f"suffix, e.g. 1,64,1K,64K,1M")
        size = int(match[1]) * dict(SIZE_UNITS).get(match[2].upper(), 1)
        if not 1 <= size <= MAX_SIZE:
            raise LabError(f"message size {item!r} is out of range: sizes go from 1 byte to "
                           f"{format_size(MAX_SIZE)}")
        if size in sizes:
            # A repeated size would give two cells with the same key and double the run time.
            raise LabError(f"message size {item!r} is given twice ({format_size(size)})")
        sizes.append(size)
    return sizes


def _size_words(n: int) -> str:
    """A size in a sentence: "256 B", "4 KiB", "1 MiB"."""
    short = format_size(n)
    return f"{short[:-1]} {short[-1]}iB" if short[-1] in "KM" else f"{short} B"


def _scaled(value: float, prefixes: Iterable[tuple[str, float]]) -> tuple[str, str]:
    """Three significant digits and the largest prefix that keeps the number at least 1.
    Rounding comes first, so 999,700 becomes "1" "M" rather than "1e+03" "k"."""
    rounded = float(f"{value:.3g}")
    for prefix, unit in prefixes:
        if abs(rounded) >= unit:
            return f"{rounded / unit:.3g}", prefix
    return f"{rounded:.3g}", ""


def format_rate(value: float | None, mode: str) -> str:
    """A rate as a reader takes it in: "183k rt/s" (rr) or "2.41 GB/s" (stream, decimal units)."""
    if value is None:
        return "-"
    if mode == "rr":
        number, prefix = _scaled(value, (("M", 1e6), ("k", 1e3)))
        return f"{number}{prefix} rt/s"
    number, prefix = _scaled(value, (("G", 1e9), ("M", 1e6), ("k", 1e3)))
    return f"{number} {prefix}B/s"


def _number(value: float | None) -> str:
    """A plain figure (microseconds, ns per byte): about three significant digits and at most
    three decimals, so a column keeps its width and never turns to exponent notation."""
    if value is None:
        return "-"
    magnitude = abs(value)
    decimals = 0 if magnitude >= 100 else 1 if magnitude >= 10 else 2 if magnitude >= 1 else 3
    return f"{value:.{decimals}f}"


def _pair(first: float | None, second: float | None) -> str:
    """Two figures of the same kind side by side, "tcp/redirect": "12.3/8.1"."""
    if first is None and second is None:
        return "-"
    return f"{_number(first)}/{_number(second)}"


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def _format_ratio(ratio: float | None, mark_loss: bool = False) -> str:
    if ratio is None:
        return "-"
    return f"{ratio:.2f}x" + (LOSS_MARK if mark_loss and ratio < 1.0 else "")


def _layout(rows: list[list[str]], align: str) -> list[str]:
    """Columns two spaces apart, each aligned as its letter in ``align`` says: "l"eft for names,
    "r"ight for figures, so that their digits line up."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(align))]
    return ["  ".join(cell.rjust(width) if how == "r" else cell.ljust(width)
                      for cell, width, how in zip(row, widths, align)).rstrip()
            for row in rows]


# ---- the document ----

CellKey = tuple[str, str, int, str]  # pinning, mode, size, transport


def _cells(doc: dict, kernel: str) -> dict[CellKey, dict]:
    return {(cell["pinning"], cell["mode"], cell["size"], cell["transport"]): cell
            for cell in doc.get("results", []) if cell["kernel"] == kernel}


def _field(cells: dict[CellKey, dict], key: CellKey, name: str) -> float | None:
    """A figure of a cell; None when the cell is missing or has no good run."""
    cell = cells.get(key)
    return None if cell is None else cell.get(name)


def _pinnings(cells: Iterable[CellKey]) -> list[str]:
    return sorted({key[0] for key in cells}, key=_pinning_rank)


def _pinning_rank(pinning: str) -> tuple[int, str]:
    return (PINNINGS.index(pinning), "") if pinning in PINNINGS else (len(PINNINGS), pinning)


def _accel(doc: dict, kernel: str) -> str | None:
    return doc.get("meta", {}).get("accel", {}).get(kernel)


def _kernels(doc: dict) -> list[str]:
    """Kernels in the order the bench ran them."""
    return list(dict.fromkeys(cell["kernel"] for cell in doc.get("results", [])))


# ---- tables ----

def target_table(doc: dict, kernel: str) -> str:
    """The bench's results on one kernel as the CLI prints them: a block per pinning, a row per
    (mode, size), the three transports' rates and the redirect's ratios against TCP and UNIX (and,
    with the policy check, the excluded connections' rate against TCP)."""
    cells = _cells(doc, kernel)
    if not cells:
        return f"no results for kernel {kernel}"
    accel = _accel(doc, kernel)
    lines = [f"kernel {kernel}" + (f" (accel {accel})" if accel else "")
             + (f" - {TCG_NOTE}" if accel == "tcg" else ""),
             "rr: round trips/s; stream: bytes/s at the receiver; ratio > 1: the redirect is faster, "
             f"'{LOSS_MARK.strip()}': slower than TCP"]
    for pinning in _pinnings(cells):
        lines += ["", f"{pinning}:"]
        rows = _pinning_rows(cells, pinning)
        lines += ["  " + line for line in _layout(rows, "ll" + "r" * (len(rows[0]) - 2))]
    lines += _error_lines(cells)
    return "\n".join(lines)


def _pinning_rows(cells: dict[CellKey, dict], pinning: str) -> list[list[str]]:
    # `excluded` (the policy check) only when measured: TCP kept by the port policy, against TCP.
    excluded = any(key[3] == "excluded" for key in cells)
    guarded = any(key[3] == "guarded" for key in cells)
    header = (["mode", "size"] + [TRANSPORT_TITLES[t] for t in TRANSPORTS]
              + ["redir/TCP", "redir/UNIX", "p50 tcp/redir us", "cpu/B tcp/redir"]
              + (["excl/TCP"] if excluded else []) + (["guard", "guard/TCP"] if guarded else []))
    rows = [header]
    for mode, size in sorted({(key[1], key[2]) for key in cells if key[0] == pinning}):
        def get(transport: str, name: str) -> float | None:
            return _field(cells, (pinning, mode, size, transport), name)
        rates = {t: get(t, "rate") for t in TRANSPORTS}
        rows.append([mode, format_size(size)]
                    + [format_rate(rates[t], mode) for t in TRANSPORTS]
                    + [_format_ratio(_ratio(rates["redirect"], rates["tcp"]), mark_loss=True),
                       _format_ratio(_ratio(rates["redirect"], rates["unix"])),
                       _pair(get("tcp", "p50_us"), get("redirect", "p50_us")),
                       _pair(get("tcp", "cpu_ns_per_byte"), get("redirect", "cpu_ns_per_byte"))]
                    + ([_format_ratio(_ratio(get("excluded", "rate"), rates["tcp"]))] if excluded else [])
                    + ([format_rate(get("guarded", "rate"), mode),
                        _format_ratio(_ratio(get("guarded", "rate"), rates["tcp"]), mark_loss=True)]
                       if guarded else []))
    return rows


def _error_lines(cells: dict[CellKey, dict]) -> list[str]:
    """One line per cell with failed runs: a "-" in the table should have a visible reason."""
    lines = []
    for (pinning, mode, size, transport), cell in sorted(cells.items()):
        errors = cell.get("errors") or []
        if errors:
            lines.append(f"  {transport} {mode} {format_size(size)} {pinning}: {len(errors)} failed "
                         f"run(s), first: {errors[0]}")
    return ["", "failed runs:"] + lines if lines else []


def _peer_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "bytes/s":
        return format_rate(value, "stream")
    if unit == "requests/s":
        number, prefix = _scaled(value, (("M", 1e6), ("k", 1e3)))
        return f"{number}{prefix} req/s"
    return f"{_number(value)} {unit}"


def peers_table(doc: dict, kernel: str) -> str:
    """Real programs (iperf3, sockperf, redis-benchmark) over plain TCP and over the redirect."""
    peers = [peer for peer in doc.get("peers", []) if peer["kernel"] == kernel]
    if not peers:
        return f"no peer measurements for kernel {kernel}"
    # One row per measurement: a tool runs several (iperf3 at two write sizes, redis per command),
    # told apart by their detail, which is the same for both transports.
    by_row: dict[tuple[str, str, str], dict[str, dict]] = {}
    for peer in peers:
        by_row.setdefault((peer["tool"], peer["metric"], peer.get("detail") or ""), {})[peer["transport"]] = peer
    rows = [["tool", "metric", "tcp", "redirect", "ratio", "detail"]]
    errors = []
    for (tool, metric, detail), entries in by_row.items():
        rows.append([tool, metric] + [_peer_cell(entries.get(t)) for t in ("tcp", "redirect")]
                    + [_format_ratio(_peer_ratio(metric, entries), mark_loss=True), detail])
        errors += [f"  {tool} {metric} {t}: {e['error']}" for t, e in entries.items() if e.get("error")]
    lines = [f"peers on kernel {kernel}; ratio: redirect/tcp (tcp/redirect for latency), "
             "so > 1: the redirect is better"]
    lines += _layout(rows, "llrrrl")
    return "\n".join(lines + (["", "errors:"] + errors if errors else []))


def _peer_cell(entry: dict | None) -> str:
    if entry is None:
        return "-"
    if entry.get("error"):
        return "error"
    return _peer_value(entry.get("value"), entry.get("unit", ""))


def _peer_ratio(metric: str, entries: dict[str, dict]) -> float | None:
    def good(transport: str) -> float | None:
        entry = entries.get(transport)
        return None if entry is None or entry.get("error") else entry.get("value")
    # A shorter latency is better, so it is inverted to keep "> 1 is better" for every row.
    if metric == "latency":
        return _ratio(good("tcp"), good("redirect"))
    return _ratio(good("redirect"), good("tcp"))


def bpf_stats_table(doc: dict, kernel: str) -> str:
    """Runs and average run time of each of the redirect's BPF programs during the bench."""
    stats = doc.get("bpf_stats", {}).get(kernel)
    if not stats:
        return f"no BPF statistics for kernel {kernel}"
    rows = [["program", "run_cnt", "avg ns/run"]]
    for program, figures in sorted(stats.items()):
        count = figures.get("run_cnt")
        average = figures.get("avg_ns")
        if average is None:
            average = _ratio(figures.get("run_time_ns"), count)
        rows.append([program, "-" if count is None else str(count), _number(average)])
    return "\n".join(_layout(rows, "lrr"))


def write_json(doc: dict, path: Path) -> None:
    """The document on disk, complete or not at all: a bench interrupted while saving must not
    leave a truncated file that a later ``report`` would fail to read."""
    atomic_write(Path(path), json.dumps(doc, indent=1) + "\n")


# ---- where the redirect wins and loses ----

def crossovers(doc: dict, kernel: str) -> list[dict]:
    """For each (mode, pinning) with a redirect/TCP ratio: the sizes compared (ascending), their
    ratios, and the sizes where the redirect loses (ratio < 1.0) and wins (> 1.0)."""
    cells = _cells(doc, kernel)
    found = []
    for mode in sorted({key[1] for key in cells}):
        for pinning in _pinnings(cells):
            ratios = {}
            for size in sorted({key[2] for key in cells if key[:2] == (pinning, mode)}):
                ratio = _ratio(_field(cells, (pinning, mode, size, "redirect"), "rate"),
                               _field(cells, (pinning, mode, size, "tcp"), "rate"))
                if ratio is not None:
                    ratios[size] = ratio
            if ratios:
                found.append({"mode": mode, "pinning": pinning, "sizes": list(ratios),
                              "ratios": list(ratios.values()),
                              "losses": [s for s, r in ratios.items() if r < 1.0],
                              "wins": [s for s, r in ratios.items() if r > 1.0]})
    return found


def _size_ranges(chosen: list[int], sizes: list[int]) -> str:
    """The chosen sizes as runs of neighbours among the sizes measured: "1 B - 64 B and 1 MiB"."""
    runs: list[list[int]] = []
    for index, size in enumerate(sizes):
        if size not in chosen:
            continue
        if runs and sizes[index - 1] == runs[-1][-1]:
            runs[-1].append(size)
        else:
            runs.append([size])
    words = [_size_words(run[0]) if len(run) == 1 else f"{_size_words(run[0])} - {_size_words(run[-1])}"
             for run in runs]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def summary_lines(doc: dict, kernel: str) -> list[str]:
    """One sentence per (mode, pinning): where the redirect loses against plain TCP and where it
    wins, e.g. "the redirect loses for stream writes of 256 B - 4 KiB on one CPU (down to 0.62x);
    it wins for 1 B - 64 B and 16 KiB - 1 MiB (up to 1.80x)"."""
    lines = []
    for found in crossovers(doc, kernel):
        what = MODE_WORDS.get(found["mode"], found["mode"])
        where = PINNING_WORDS.get(found["pinning"], f"pinned {found['pinning']}")
        low, high = min(found["ratios"]), max(found["ratios"])
        losses, wins, sizes = found["losses"], found["wins"], found["sizes"]
        if losses:
            line = (f"the redirect loses for {what} of {_size_ranges(losses, sizes)} {where} "
                    f"(down to {low:.2f}x)")
            if wins:
                line += f"; it wins for {_size_ranges(wins, sizes)} (up to {high:.2f}x)"
        elif wins:
            which = "every size measured" if wins == sizes else _size_ranges(wins, sizes)
            span = f"{low:.2f}x" if f"{low:.2f}" == f"{high:.2f}" else f"{low:.2f}x - {high:.2f}x"
            line = f"the redirect wins for {what} of {which} {where} ({span})"
        else:
            line = f"the redirect ties with plain TCP for {what} {where}"
        lines.append(line)
    return lines


# ---- plots ----

def _new_figure(rows: int, cols: int):
    """A figure on matplotlib's object API, not pyplot: it renders with Agg when saved as PNG,
    needs no display, and leaves the process's pyplot backend and figure registry alone."""
    from matplotlib.figure import Figure
    figure = Figure(figsize=(6 * cols, 3.8 * rows + 0.8), layout="constrained")
    return figure, figure.subplots(rows, cols, squeeze=False)


def _size_axis(axes, sizes: list[int]) -> None:
    """Log x with a tick at each size measured, labelled as the CLI writes sizes."""
    from matplotlib.ticker import NullLocator
    axes.set_xscale("log", base=2)
    axes.set_xticks(sizes, [format_size(s) for s in sizes])
    axes.xaxis.set_minor_locator(NullLocator())
    axes.set_xlabel("message size (bytes)")
    axes.grid(True, which="major", alpha=0.3)


def _save(figure, path: Path) -> Path:
    # The temporary name does not end in .png, hence the explicit format.
    with atomic_file(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    return path


def _plot_transports(axes, cells: dict[CellKey, dict], pinning: str, mode: str, field: str) -> bool:
    """One line per transport of ``field`` against size; False when there is nothing to draw."""
    sizes = sorted({key[2] for key in cells if key[:2] == (pinning, mode)})
    drawn = False
    for transport in (*TRANSPORTS, "guarded"):
        points = [(s, _field(cells, (pinning, mode, s, transport), field)) for s in sizes]
        points = [(s, v) for s, v in points if v is not None]
        if points:
            label, colour, marker = TRANSPORT_STYLE[transport]
            axes.plot(*zip(*points), label=label, color=colour, marker=marker)
            drawn = True
    if drawn:
        _size_axis(axes, sizes)
        axes.legend(fontsize="small")
    else:
        axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes)
    return drawn


def plot_target(doc: dict, kernel: str, out_dir: Path) -> Path:
    """``out_dir/bench-<kernel>.png``: per pinning, stream throughput (left) and rr p50 latency
    (right) against message size, one line per transport."""
    from matplotlib.ticker import FuncFormatter
    cells = _cells(doc, kernel)
    if not cells:
        raise LabError(f"no results for kernel {kernel} to plot")
    pinnings = _pinnings(cells)
    figure, grid = _new_figure(len(pinnings), 2)
    for row, pinning in zip(grid, pinnings):
        stream, rr = row
        if _plot_transports(stream, cells, pinning, "stream", "rate"):
            stream.set_yscale("log")
            stream.yaxis.set_major_formatter(FuncFormatter(lambda v, _: format_rate(v, "stream")))
        stream.set_title(f"{pinning}: stream throughput at the receiver")
        if _plot_transports(rr, cells, pinning, "rr", "p50_us"):
            rr.set_yscale("log")  # 1 B and 1 MiB round trips differ 10-100x; small sizes must stay readable
        rr.set_ylabel("p50 round trip (µs)")
        rr.set_title(f"{pinning}: request/response latency, p50 (lower is better)")
    figure.suptitle(f"{kernel}: plain TCP vs redirect vs AF_UNIX")
    if _accel(doc, kernel) == "tcg":
        # supxlabel, unlike a free text, gets its own room from the constrained layout.
        figure.supxlabel(TCG_NOTE, color="tab:red")
    return _save(figure, Path(out_dir) / f"bench-{kernel}.png")


def plot_kernels(doc: dict, out_dir: Path) -> Path | None:
    """``out_dir/bench-kernels.png``: the redirect/TCP rate ratio against size, one line per
    kernel, one subplot per (mode, pinning); None when fewer than two kernels have a ratio (a
    single kernel, or every redirect or TCP run failed), as there is nothing to compare."""
    found = {kernel: {(c["mode"], c["pinning"]): c for c in crossovers(doc, kernel)}
             for kernel in _kernels(doc)}
    kernels = [kernel for kernel in found if found[kernel]]
    if len(kernels) < 2:
        return None
    panels = sorted({panel for kernel in kernels for panel in found[kernel]},
                    key=lambda panel: (panel[0], _pinning_rank(panel[1])))
    cols = min(2, len(panels))
    figure, grid = _new_figure(-(-len(panels) // cols), cols)
    for axes, (mode, pinning) in zip(grid.flat, panels):
        sizes = set()
        for index, kernel in enumerate(kernels):
            panel = found[kernel].get((mode, pinning))
            if panel:
                # A colour per kernel, not per line drawn, so a kernel missing from one panel
                # does not shift the colours of the others.
                axes.plot(panel["sizes"], panel["ratios"], marker="o", label=kernel, color=f"C{index % 10}")
                sizes.update(panel["sizes"])
        axes.axhline(1.0, color="black", linestyle="--", linewidth=1)
        _size_axis(axes, sorted(sizes))
        axes.set_ylabel("redirect / plain TCP rate")
        axes.set_title(f"{MODE_WORDS.get(mode, mode)}, {pinning}")
        axes.legend(fontsize="small")
    for axes in list(grid.flat)[len(panels):]:
        axes.set_visible(False)
    figure.suptitle("redirect vs plain TCP by kernel (above 1: the redirect is faster)")
    tcg = [kernel for kernel in kernels if _accel(doc, kernel) == "tcg"]
    if tcg:
        figure.supxlabel(f"TCG guests ({', '.join(tcg)}): compare ratios, not absolute figures",
                         color="tab:red")
    return _save(figure, Path(out_dir) / "bench-kernels.png")

