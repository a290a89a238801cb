#!/usr/bin/env python3
"""Reports a paired run of scripts/bench.sh (BENCH_PAIRED="A B"): per round, the CPU-seconds
per million spans of gateways A and B, which ran at the same time under the same load, and
B's over A's; then the median of those ratios. Prints a Markdown section; --append FILE adds it.

Layout: RESULTS/round-<N>/{a,b}/ with `gateway` (its name), loadgen.json (weir-loadgen --json)
and proc.json (cpu_ticks, clk_tck, vmhwm_kb), written by bench.sh.
"""

import argparse
import datetime
import json
import os
import statistics


def side(directory):
    with open(os.path.join(directory, "gateway"), encoding="utf-8") as f:
        name = f.read().strip()
    with open(os.path.join(directory, "loadgen.json"), encoding="utf-8") as f:
        lg = json.load(f)
    with open(os.path.join(directory, "proc.json"), encoding="utf-8") as f:
        proc = json.load(f)
    spans = lg["spans_acknowledged"]
    cpu = proc["cpu_ticks"] / proc["clk_tck"]
    return {
        "name": name,
        "cpu_per_million": cpu / (spans / 1e6) if spans else None,
        "spans": spans,
        "failed": lg["requests_failed"],
        "p99": lg["latency_ms"]["p99"],
        "rss_mib": proc["vmhwm_kb"] / 1024,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("results")
    parser.add_argument("--append")
    parser.add_argument("--command", default="scripts/bench.sh")
    parser.add_argument("--rate", default="")
    parser.add_argument("--duration", default="")
    parser.add_argument("--loadavg", default="")
    parser.add_argument("--transport", default="OTLP/gRPC")
    parser.add_argument("--versions", default="")
    args = parser.parse_args()

    rounds = sorted((d for d in os.listdir(args.results) if d.startswith("round-")),
                    key=lambda d: int(d.split("-", 1)[1]))
    rows, ratios = [], []
    names = None
    for r in rounds:
        a = side(os.path.join(args.results, r, "a"))
        b = side(os.path.join(args.results, r, "b"))
        names = (a["name"], b["name"])
        ratio = (b["cpu_per_million"] / a["cpu_per_million"]
                 if a["cpu_per_million"] and b["cpu_per_million"] else None)
        if ratio is not None:
            ratios.append(ratio)
        rows.append(
            f"| {r.split('-', 1)[1]} | {a['cpu_per_million']:.2f} | {b['cpu_per_million']:.2f} "
            f"| {'n/a' if ratio is None else f'{ratio:.3f}'} | {a['spans']:,} / {b['spans']:,} "
            f"| {a['failed']} / {b['failed']} | {a['p99']:.1f} / {b['p99']:.1f} "
            f"| {a['rss_mib']:.1f} / {b['rss_mib']:.1f} |")
    a_name, b_name = names
    med = statistics.median(ratios) if ratios else None
    lines = [
        f"| round | {a_name} CPU-s per M spans | {b_name} CPU-s per M spans | {b_name} / {a_name} "
        "| acked spans (A / B) | failed requests (A / B) | p99 ms (A / B) | peak RSS MiB (A / B) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ] + rows
    summary = (f"Median of the per-round ratios: **{med:.3f}** "
               f"(min {min(ratios):.3f}, max {max(ratios):.3f}, {len(ratios)} rounds)."
               if ratios else "No ratio could be computed.")
    print("\n".join(lines))
    print(summary)
    if args.append:
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        section = [
            "",
            f"## {now}: paired, {a_name} and {b_name} at the same time, {args.transport}",
            "",
            f"- command: `{args.command}`",
            f"- each gateway under its own open-loop weir-loadgen at {args.rate} spans/s for "
            f"{args.duration}s per round ({args.transport}, 100 spans/request, 5 attributes/span), "
            "both producing to one fresh Tansu; the two share the machine's CPUs and whatever "
            "else runs on it, so the ratio of a round is taken under the same conditions",
        ]
        if args.versions:
            section.append(f"- versions: {args.versions}")
        if args.loadavg:
            section.append(f"- load average (1, 5, 15 min): {args.loadavg}")
        section += ["", *lines, "", summary, ""]
        with open(args.append, "a", encoding="utf-8") as f:
            f.write("\n".join(section))


if __name__ == "__main__":
    main()
