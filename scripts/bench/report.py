#!/usr/bin/env python3
"""Turns the per-run results of scripts/bench.sh into one Markdown table (stdout), and with
--append FILE adds it, with the date, machine, versions and command, to FILE.

Each run is a directory RESULTS/<gateway>-<load>/round-<N>/ (or, from older runs,
RESULTS/<gateway>-<load>/ itself), load being closed, open or latency (BENCH_LATENCY=1), holding:
  loadgen.json  weir-loadgen --json report of the measured run
  warmup.json   weir-loadgen --json report of the warm-up (its spans are in Kafka too)
  kafka.json    scripts/bench/count_spans.py output for the run's topic
  proc.json     written by bench.sh: CPU ticks of the gateway over the measured run, CLK_TCK,
                VmHWM in kB, and error counts from the gateway's log (all null for the bare
                producer, target kafka or kafka-lingerN, which has no gateway process)

The latency runs get a table of their own: spans/s, p50 and p99 per target, and each Weir
target's p99 minus the floor's (the bare producer at linger 0, target kafka), per round.
"""

import argparse
import datetime
import json
import os
import re
import statistics
import sys

# Known gateways in table order; others found in the results (weir-lingerN, kafka-lingerN,
# ...) follow in name order.
GATEWAYS = ["kafka", "weir", "weir-base", "weir-nospool", "weir-rules", "weir-policy", "weir-tail",
            "weir-full", "weir-spanmetrics", "rotel"]
LOADS = ["closed", "open", "latency"]
TITLE = {"weir": "Weir", "weir-base": "Weir (base)", "weir-nospool": "Weir, spool off",
         "weir-rules": "Weir + 100 rules", "weir-policy": "Weir + empty policy",
         "weir-tail": "Weir + policy with tail", "weir-spanmetrics": "Weir + span metrics",
         "weir-full": "Weir + 100 rules + tail marking",
         "rotel": "Rotel", "kafka": "bare producer, linger 0 (the floor)"}


def title(gateway):
    if gateway in TITLE:
        return TITLE[gateway]
    m = re.fullmatch(r"(weir|kafka)-linger(\d+)(?:-inflight(\d+))?", gateway)
    if m:
        in_flight = f", {m[3]} in flight" if m[3] else ""
        return (f"Weir, linger {m[2]} ms{in_flight}" if m[1] == "weir"
                else f"bare producer, linger {m[2]} ms")
    return gateway


def load_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_run(directory):
    run = {name: load_json(os.path.join(directory, f"{name}.json"))
           for name in ("loadgen", "kafka", "proc")}
    warmup = os.path.join(directory, "warmup.json")
    run["warmup"] = load_json(warmup) if os.path.exists(warmup) else {"spans_acknowledged": 0}
    lg, proc = run["loadgen"], run["proc"]
    cpu_seconds = proc["cpu_ticks"] / proc["clk_tck"] if proc["cpu_ticks"] is not None else None
    acked_run = lg["spans_acknowledged"]
    acked_all = acked_run + run["warmup"]["spans_acknowledged"]
    run["metrics"] = {
        "spans_per_second": lg["spans_per_second"],
        "cpu_per_million": cpu_seconds / (acked_run / 1e6) if acked_run and cpu_seconds is not None else None,
        "rss_mib": proc["vmhwm_kb"] / 1024 if proc["vmhwm_kb"] is not None else None,
        "p50": lg["latency_ms"]["p50"],
        "p99": lg["latency_ms"]["p99"],
        "acked": acked_all,
        "counted": run["kafka"]["spans"],
        "difference": run["kafka"]["spans"] - acked_all,
        "failed": lg["requests_failed"],
        "failures": lg["failures"],
    }
    return run


def read_rounds(directory):
    """The runs of one gateway and load, in round order."""
    rounds = sorted((d for d in os.listdir(directory) if d.startswith("round-")),
                    key=lambda d: int(d.split("-", 1)[1]))
    if not rounds:
        return [read_run(directory)]
    return [read_run(os.path.join(directory, d)) for d in rounds]


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def combine(rounds):
    """One row's figures from its rounds: medians of the rates, CPU and latencies, the largest
    peak RSS, and span counts summed (a loss in any round shows)."""
    ms = [r["metrics"] for r in rounds]
    failures = {}
    for m in ms:
        for k, v in m["failures"].items():
            failures[k] = failures.get(k, 0) + v
    return {
        "spans_per_second": median(m["spans_per_second"] for m in ms),
        "cpu_per_million": median(m["cpu_per_million"] for m in ms),
        "rss_mib": max((m["rss_mib"] for m in ms if m["rss_mib"] is not None), default=None),
        "p50": median(m["p50"] for m in ms),
        "p99": median(m["p99"] for m in ms),
        "acked": sum(m["acked"] for m in ms),
        "counted": sum(m["counted"] for m in ms),
        "difference": sum(m["difference"] for m in ms),
        "failed": sum(m["failed"] for m in ms),
        "failures": failures,
        "rounds": len(ms),
    }


def fmt(value, digits=0):
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.2f}"


KEYS = ("spans_per_second", "cpu_per_million", "rss_mib", "p50", "p99")


def paired_ratios(a_rounds, b_rounds, key):
    """a/b of `key` per round (runs of one round are side by side in time)."""
    out = []
    for a, b in zip(a_rounds, b_rounds):
        x, y = a["metrics"][key], b["metrics"][key]
        if x is not None and y:
            out.append(x / y)
    return out


def ratio_row(label, load, a_rounds, b_rounds):
    """A table row of a's figures divided by b's: the median of the per-round ratios."""
    cells = []
    for k in KEYS:
        r = median(paired_ratios(a_rounds, b_rounds, k))
        cells.append("n/a" if r is None else f"{r:.2f}")
    return f"| {label} | {load} | " + " | ".join(cells) + " | | | | |"


def load_label(load, lg):
    if load in ("closed", "latency"):
        return f"closed, {lg['concurrency']} senders"
    return f"open, {lg['rate_offered_spans_per_second']:,.0f} spans/s"


def gateways_in(runs):
    """The gateways of `runs` in table order: kafka-lingerN after kafka, weir-lingerN after
    weir, by N; unknown names last."""
    def key(gateway):
        m = re.fullmatch(r"(weir|kafka)-linger(\d+)", gateway)
        if m:
            return (GATEWAYS.index(m[1]), 1, int(m[2]), gateway)
        if gateway in GATEWAYS:
            return (GATEWAYS.index(gateway), 0, 0, gateway)
        return (len(GATEWAYS), 0, 0, gateway)
    return sorted({g for g, _ in runs}, key=key)


def table(runs):
    lines = [
        "| gateway | load | acked spans/s | CPU-s per M spans | peak RSS MiB | p50 ms | p99 ms "
        "| acked (incl. warm-up) | counted in Kafka | Kafka - acked | failed requests |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for load in ("closed", "open"):
        present = [g for g in gateways_in(runs) if (g, load) in runs]
        for gateway in present:
            rounds = runs[(gateway, load)]
            run = rounds[0]
            m = combine(rounds)
            failed = str(m["failed"])
            if m["failures"]:
                failed += " (" + ", ".join(f"{k} {v}" for k, v in sorted(m["failures"].items())) + ")"
            diff = f"{m['difference']:+,}" if m["difference"] else "0"
            if m["difference"]:
                diff = f"**{diff}**"
            label = load_label(load, run["loadgen"])
            if m["rounds"] > 1:
                label += f", median of {m['rounds']}"
            lines.append(
                f"| {title(gateway)} | {label} | {fmt(m['spans_per_second'])} "
                f"| {fmt(m['cpu_per_million'], 2)} | {fmt(m['rss_mib'], 1)} | {fmt(m['p50'], 2)} "
                f"| {fmt(m['p99'], 2)} | {m['acked']:,} | {m['counted']:,} | {diff} | {failed} |"
            )
        for label, a, b in RATIOS:
            if (a, load) in runs and (b, load) in runs:
                lines.append(ratio_row(label, load, runs[(a, load)], runs[(b, load)]))
    return "\n".join(lines)


FLOOR = "kafka"


def latency_table(runs):
    """The latency mode's table: per target the medians over rounds of spans/s, p50 and p99,
    and for gateways their p99 minus the floor's p99 of the same round (median of those)."""
    present = [g for g in gateways_in(runs) if (g, "latency") in runs]
    lines = [
        "| target | load | acked spans/s | p50 ms | p99 ms | p99 - floor p99 ms | CPU-s per M spans "
        "| acked (incl. warm-up) | counted in Kafka | Kafka - acked | failed requests |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    floor = runs.get((FLOOR, "latency"))
    for gateway in present:
        rounds = runs[(gateway, "latency")]
        m = combine(rounds)
        over = "n/a"
        if floor is not None and gateway != FLOOR:
            diffs = [r["metrics"]["p99"] - f["metrics"]["p99"] for r, f in zip(rounds, floor)
                     if r["metrics"]["p99"] is not None and f["metrics"]["p99"] is not None]
            if diffs:
                over = f"{statistics.median(diffs):+.2f}"
        failed = str(m["failed"])
        if m["failures"]:
            failed += " (" + ", ".join(f"{k} {v}" for k, v in sorted(m["failures"].items())) + ")"
        diff = f"**{m['difference']:+,}**" if m["difference"] else "0"
        label = load_label("latency", rounds[0]["loadgen"])
        if m["rounds"] > 1:
            label += f", median of {m['rounds']}"
        lines.append(
            f"| {title(gateway)} | {label} | {fmt(m['spans_per_second'])} | {fmt(m['p50'], 2)} "
            f"| {fmt(m['p99'], 2)} | {over} | {fmt(m['cpu_per_million'], 2)} | {m['acked']:,} "
            f"| {m['counted']:,} | {diff} | {failed} |")
    return "\n".join(lines)


RATIOS = (("rules/no rules", "weir-rules", "weir"), ("tail/no tail", "weir-tail", "weir-policy"),
          ("tail/no policy", "weir-tail", "weir"), ("full/no policy", "weir-full", "weir"),
          ("Weir/Rotel", "weir", "rotel"))


def findings(runs):
    notes = []
    for (a, b, load) in [(a, b, load) for _, a, b in RATIOS for load in ("closed", "open")]:
        if (a, load) in runs and (b, load) in runs and len(runs[(a, load)]) > 1:
            per_round = paired_ratios(runs[(a, load)], runs[(b, load)], "cpu_per_million")
            notes.append(f"CPU per span, {title(a)} / {title(b)}, {load} loop, per round: "
                         + ", ".join(f"{r:.2f}" for r in per_round) + ".")
    for (gateway, load), rounds in sorted(runs.items()):
        for i, run in enumerate(rounds, 1):
            m, proc, kafka = run["metrics"], run["proc"], run["kafka"]
            name = f"{title(gateway)} {load}" + (f" round {i}" if len(rounds) > 1 else "")
            if load == "latency":
                notes.append(f"{name}: {m['spans_per_second']:,.0f} spans/s, p50 {fmt(m['p50'], 2)} ms, "
                             f"p99 {fmt(m['p99'], 2)} ms.")
            if m["difference"] < 0:
                notes.append(f"{name}: {-m['difference']:,} acknowledged spans are missing from Kafka.")
            elif m["difference"] > 0:
                notes.append(f"{name}: Kafka holds {m['difference']:,} more spans than were acknowledged "
                             f"({kafka['duplicate_spans']:,} duplicates).")
            if proc.get("size_errors"):
                notes.append(f"{name}: {proc['size_errors']} MessageSizeTooLarge errors in the gateway's log "
                             f"(whole batches dropped after the client got OK).")
            if proc.get("error_lines"):
                notes.append(f"{name}: {proc['error_lines']} ERROR lines in the gateway's log.")
            if kafka.get("undecodable_records"):
                notes.append(f"{name}: {kafka['undecodable_records']} Kafka records did not decode as TracesData.")
            if kafka.get("stopped_by") != "idle":
                notes.append(f"{name}: the Kafka count stopped at its time limit; it may be low.")
    cpu = [f"{title(g)} {load} " + "/".join(f"{r['loadgen']['loadgen_cpu_seconds']:.1f}" for r in rounds) + " s"
           for (g, load), rounds in sorted(runs.items())
           if all(r["loadgen"].get("loadgen_cpu_seconds") is not None for r in rounds)]
    if cpu:
        notes.append("weir-loadgen's own CPU over the measured runs: " + ", ".join(cpu) + ".")
    # Open loop: how late the generator itself sent (included in the p50 and p99 above), so that
    # a late generator is not read as a slow gateway.
    late = [f"{title(g)} p50 {fmt(median(r['loadgen']['send_lateness_ms']['p50'] for r in rounds), 2)} "
            f"/ p99 {fmt(median(r['loadgen']['send_lateness_ms']['p99'] for r in rounds), 2)} ms"
            for (g, load), rounds in sorted(runs.items())
            if load == "open" and all(r["loadgen"].get("send_lateness_ms") for r in rounds)]
    if late:
        notes.append("weir-loadgen's own send lateness after the schedule, open loop (part of the "
                     "latencies above): " + ", ".join(late) + ".")
    return notes


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("results", help="directory with one subdirectory per run")
    parser.add_argument("--append", help="Markdown file to append the section to")
    parser.add_argument("--command", default="scripts/bench.sh", help="the command that ran")
    parser.add_argument("--versions", default="", help="one line naming the versions compared")
    parser.add_argument("--settings", default="", help="one line with the load settings")
    parser.add_argument("--loadavg", default="", help="the machine's load averages around the run")
    parser.add_argument("--transport", default="OTLP/gRPC", help="the load's transport, as the title names it")
    args = parser.parse_args()

    runs = {}
    for entry in sorted(os.listdir(args.results)):
        gateway, _, load = entry.rpartition("-")
        if load in LOADS and os.path.isdir(os.path.join(args.results, entry)):
            runs[(gateway, load)] = read_rounds(os.path.join(args.results, entry))
    if not runs:
        sys.exit("report.py: no results found")

    latency = any(load == "latency" for _, load in runs)
    body = latency_table(runs) if latency else table(runs)
    notes = findings(runs)
    print(body)
    for note in notes:
        print(f"- {note}")

    if args.append:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown CPU")
        with open("/proc/meminfo", encoding="utf-8") as f:
            mem_kb = int(next(line.split()[1] for line in f if line.startswith("MemTotal")))
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        gateways = " vs ".join(title(g) for g in gateways_in(runs))
        mode = "latency, " if latency else ""
        section = [
            "",
            f"## {now}: {mode}{gateways}, {args.transport} into Kafka (Tansu)",
            "",
            f"- machine: {os.cpu_count()} CPUs ({model}), {mem_kb / 1024 / 1024:.0f} GiB; gateway, broker, "
            "load generator and span counter share these CPUs",
            f"- command: `{args.command}`",
        ]
        if args.loadavg:
            section.append(f"- load average (1, 5, 15 min): {args.loadavg} (other work on the machine skews results)")
        if args.versions:
            section.append(f"- versions: {args.versions}")
        if args.settings:
            section.append(f"- load: {args.settings}")
        section += ["", body, ""]
        if notes:
            section += [f"- {note}" for note in notes] + [""]
        with open(args.append, "a", encoding="utf-8") as f:
            f.write("\n".join(section))


if __name__ == "__main__":
    main()
