"""Rewrite the measured section of docs/benchmarks.md from the results files.

    python benchmarks/report.py [--results benchmarks/results] [--doc docs/benchmarks.md]

Every ``*.json`` under --results (each benchmark writes one: ``_common.write_results``)
becomes a subsection: the command that wrote it, its commit, date and machine, then its
figures: a ``headline`` list as a table (median, which goals are judged on, min, every run,
goal), a ``figures`` list (``scale.py``) as a table, and other top-level numbers as a list.
The doc's text between the two ``report.py`` marker lines is replaced; the rest is left as
written. No figure is typed by hand into that section.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import REPO

BEGIN = "<!-- begin: written by benchmarks/report.py from benchmarks/results/*.json -->"
END = "<!-- end: written by benchmarks/report.py -->"


def number(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.4g}" if abs(value) < 1 else f"{value:.2f}"


def render(name: str, record: dict) -> list[str]:
    """The markdown of one results file."""
    lines = [f"### `{name}`", "",
             f"`{record.get('command', '?')}` at {record.get('commit', '?')}, "
             f"{record.get('date', '?')}; {record.get('machine', '?')}"
             + (f"; seed {record['seed']}" if "seed" in record else "") + ".", ""]
    if record.get("headline"):
        lines += ["| figure | median | min | runs | goal |", "|---|---|---|---|---|"]
        for h in record["headline"]:
            unit = f" {h['unit']}" if h.get("unit") else ""
            status = {True: ": met", False: ": NOT met", None: ""}[h.get("met")]
            runs = h.get("runs", [])
            # a latency benchmark's runs are its requests: too many to list
            runs = ", ".join(number(r) for r in runs) if len(runs) <= 12 else f"{len(runs)} runs"
            lines.append(f"| {h['figure']} | {number(h['median'])}{unit} | "
                         f"{number(h['min'])}{unit} | {runs} | {h.get('goal', '')}{status} |")
        lines.append("")
    if record.get("figures"):
        lines += ["| figure | measured | target |", "|---|---|---|"]
        lines += [f"| {f['figure'].strip()} | {f['measured']} | {f['target']} |"
                  for f in record["figures"]]
        lines.append("")
    if record.get("ivf"):
        kinds = list(record["ivf"][0]["recall_ties"])
        lines += ["| nprobe | " + " | ".join(f"recall@50 (ties), {k}" for k in kinds)
                  + " | ms a query | x flat |", "|---" * (len(kinds) + 3) + "|"]
        for r in record["ivf"]:
            lines.append(f"| {r['nprobe']} | "
                         + " | ".join(f"{r['recall_ties'][k]:.3f}" for k in kinds)
                         + f" | {r['ms_per_query']:.2f} | {r['x_flat']:.3f} |")
        lines.append("")
    if not record.get("headline"):  # an older results file: its numbers as they are
        skip = {"command", "commit", "date", "machine", "seed", "seconds", "report"}
        scalars = [f"- {k}: {number(v) if isinstance(v, float) else v}"
                   for k, v in record.items()
                   if k not in skip and isinstance(v, (int, float, str))]
        lines += scalars + ([""] if scalars else [])
        nested = [(k, v) for k, v in record.items() if k not in skip and isinstance(v, dict)]
        for key, value in nested:
            lines += [f"| {key} | |", "|---|---|"]
            lines += [f"| {path} | {number(v) if isinstance(v, float) else v} |"
                      for path, v in flatten(value)]
            lines.append("")
    return lines


def flatten(tree: dict, prefix: str = "") -> list[tuple[str, object]]:
    """A nested dict's leaves as ("a / b / c", value) pairs."""
    out = []
    for key, value in tree.items():
        path = f"{prefix} / {key}" if prefix else str(key)
        out += flatten(value, path) if isinstance(value, dict) else [(path, value)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--doc", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = parser.parse_args()
    body = []
    for path in sorted(args.results.glob("*.json")):
        body += render(path.name, json.loads(path.read_text()))
    text = args.doc.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{args.doc}: no '{BEGIN}' ... '{END}' section to rewrite")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    args.doc.write_text(head + BEGIN + "\n\n" + "\n".join(body) + "\n" + END + tail)
    print(f"rewrote the measured section of {args.doc} from {args.results}/*.json")


if __name__ == "__main__":
    main()
