#!/usr/bin/env python3
"""The summary of one scripts/bench.sh run: every figure an issue names a target for,
next to its target and, where the issue names a peer, the peer's figure from the same
run and the ratio. Reads the harnesses' Markdown tables from the run's output dir
(one NAME.md per harness, as bench.sh writes them) and prints a Markdown table.

    scripts/bench_summary.py OUT_DIR

A figure whose harness failed or printed no table shows as "not measured"; nothing
is guessed.
"""

import re
import sys
from pathlib import Path


def tables(text):
    """Every Markdown table in `text`, as (heading above it, list of rows of cells)."""
    found, heading, rows = [], "", None
    for line in text.splitlines():
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            separator = all(re.fullmatch(r":?-+:?", c) for c in cells)
            if rows is None:
                rows = []
                found.append((heading, rows))
            elif separator and len(rows) > 1:
                # Two tables without a blank line between them: the row above this
                # separator is the next table's header.
                rows = [rows.pop()]
                found.append((heading, rows))
            if not separator:
                rows.append(cells)
        else:
            rows = None
    return found


def number(cell):
    """The first number in a table cell ("13403 B (13.09 KiB)" -> 13403.0)."""
    match = re.search(r"-?\d+(?:\.\d+)?", cell.replace(",", ""))
    return float(match.group()) if match else None


def column(rows, name):
    """Index of the column whose header contains `name`."""
    for index, header in enumerate(rows[0]):
        if name in header:
            return index
    raise KeyError(name)


class Run:
    def __init__(self, out):
        self.out = Path(out)

    def tables(self, harness):
        path = self.out / f"{harness}.md"
        return tables(path.read_text()) if path.is_file() else []

    def table(self, harness, header_word, heading_word=""):
        """The first table of `harness` with a header cell containing `header_word`
        (and a heading containing `heading_word`)."""
        for heading, rows in self.tables(harness):
            if rows and any(header_word in h for h in rows[0]) and heading_word in heading:
                return rows
        return None


def fmt(value, unit=""):
    if value is None:
        return "not measured"
    if abs(value) >= 1000:
        return f"{value:,.0f}{unit}"
    return f"{value:.2f}{unit}".replace(".00", "")


def verdict(value, target, higher_is_better):
    if value is None:
        return "not measured"
    met = value >= target if higher_is_better else value <= target
    return "met" if met else "**not met**"


def summary(out):
    run = Run(out)
    lines = []

    def figure(name, value, target_text, target, higher, peer=None, ratio=None, ratio_target=None, unit=""):
        shown_ratio = "" if ratio is None else f"{ratio:.2f}×"
        check = verdict(value, target, higher) if target is not None else ""
        if ratio_target is not None:
            check = verdict(ratio, ratio_target, higher) if ratio is not None else "not measured"
        lines.append(
            f"| {name} | {fmt(value, unit)} | {target_text} | {'' if peer is None else fmt(peer, unit)} | {shown_ratio} | {check} |"
        )

    # ami-bridge
    parser = run.table("ami-parser", "messages/s")
    best = max((number(r[column(parser, "messages/s")]) for r in parser[1:]), default=None) if parser else None
    figure("AMI parser, one core, msgs/s", best, "≥ 1,000,000", 1_000_000, True)
    e2e = run.table("ami-e2e-and-peers", "events/s", "ami-bridge")
    rows = {r[0]: r for r in e2e[1:]} if e2e else {}
    max_rate = number(rows["max rate"][column(e2e, "events/s")]) if "max rate" in rows else None
    lost = sum(number(r[column(e2e, "lost")]) or 0 for r in rows.values()) if rows else None
    paced_p99 = number(rows["paced"][column(e2e, "p99")]) if "paced" in rows else None
    figure("AMI end to end (sim -> bridge -> JetStream -> subscriber), events/s", max_rate, "≥ 100,000", 100_000, True)
    figure("AMI end to end, events lost", lost, "0", 0, False)
    figure("AMI end to end, p99 ms at 10,000 events/s", paced_p99, "≤ 5", 5, False)
    peers = run.table("ami-e2e-and-peers", "peer")
    best_peer = max((number(r[column(peers, "events/s")]) for r in peers[1:]), default=None) if peers else None
    ratio = max_rate / best_peer if max_rate and best_peer else None
    figure("AMI events/s against the faster peer (panoramisk, node asterisk-manager; they only receive)",
           max_rate, "≥ 10× the peer", None, True, best_peer, ratio, 10)

    # ws-push: ours are the tables before the peer's heading.
    ours, peer = [], []
    for heading, rows in run.tables("ws-push"):
        (peer if "Peer" in heading else ours).append(rows)
    def pick(groups, word):
        return next((rows for rows in groups if rows and any(word in h for h in rows[0])), None)
    def per_connection_kib(rows):
        return number(rows[1][column(rows, "per connection")]) / 1024 if rows and len(rows) > 1 else None
    idle, idle_peer = pick(ours, "per connection"), pick(peer, "per connection")
    ours_kib, peer_kib = per_connection_kib(idle), per_connection_kib(idle_peer)
    figure("ws-push RSS per idle connection, KiB", ours_kib, "≤ 4", 4, False, peer_kib,
           ours_kib / peer_kib if ours_kib and peer_kib else None)
    broadcast, broadcast_peer = pick(ours, "deliveries per CPU-s"), pick(peer, "deliveries per CPU-s")
    if broadcast:
        peer_rows = {r[1]: r for r in broadcast_peer[1:]} if broadcast_peer else {}
        for r in broadcast[1:]:
            offered = r[column(broadcast, "offered")]
            mine = number(r[column(broadcast, "deliveries per CPU-s")])
            theirs_row = peer_rows.get(offered)
            theirs = number(theirs_row[column(broadcast_peer, "deliveries per CPU-s")]) if theirs_row else None
            figure(f"ws-push deliveries per server CPU-second at {int(number(offered)):,}/s offered", mine,
                   "≥ 3× the peer", None, True, theirs, mine / theirs if mine and theirs else None, 3)
            p99 = number(r[column(broadcast, "p99")])
            theirs_p99 = number(theirs_row[column(broadcast_peer, "p99")]) if theirs_row else None
            figure(f"ws-push p99 ms publish -> receive at {int(number(offered)):,}/s offered", p99,
                   "≤ half the peer", None, False, theirs_p99, p99 / theirs_p99 if p99 and theirs_p99 else None, 0.5)
            lost = number(r[column(broadcast, "lost")])
            figure(f"ws-push pushes lost at {int(number(offered)):,}/s offered", lost, "0", 0, False)
    else:
        figure("ws-push broadcast", None, "", None, True)

    # chat-store
    for harness, target in (("chat-store-sqlite", 5_000), ("chat-store-postgres", 10_000)):
        rows = run.table(harness, "batched send")
        backend = harness.split("-")[-1]
        sent = number(rows[1][column(rows, "batched send")]) if rows and len(rows) > 1 else None
        p99 = number(rows[1][column(rows, "history p99")]) if rows and len(rows) > 1 else None
        figure(f"chat-store {backend}, batched send msgs/s", sent, f"≥ {target:,}", target, True)
        figure(f"chat-store {backend}, history page p99 ms", p99, "≤ 10", 10, False)

    # hook-runner
    rows = run.table("hook-runner", "benchmark")
    by_name = {r[0]: r for r in rows[1:]} if rows else {}
    def hook(prefix):
        row = next((r for name, r in by_name.items() if name.startswith(prefix)), None)
        return number(row[1]) if row else None
    figure("hook-runner rule matching, 1,000 rules, events/s", hook("rule matching, 1,000 rules"), "≥ 100,000", 100_000, True)
    figure("hook-runner event -> publish action end to end, events/s", hook("event -> publish action"), "≥ 50,000", 50_000, True)
    figure("hook-runner exec action p50 ms", hook("exec action"), "≤ 3", 3, False)

    # F1
    rows = run.table("f1-latency", "measured")
    by_name = {r[0]: r for r in rows[1:]} if rows else {}
    p99 = number(by_name["latency p99"][1]) if "latency p99" in by_name else None
    p50 = number(by_name["latency p50"][1]) if "latency p50" in by_name else None
    figure("F1 AMI byte in -> browser frame out, p50 ms at 1,000 calls/s", p50, "", None, False)
    figure("F1 AMI byte in -> browser frame out, p99 ms at 1,000 calls/s", p99, "≤ 20", 20, False)

    head = [
        "| figure | measured | target | peer, same run | ratio to the peer | |",
        "|---|---|---|---|---|---|",
    ]
    return "\n".join(head + lines)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(summary(sys.argv[1]))
