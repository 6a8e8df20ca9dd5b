"""Writes the suite's sections as Markdown (bench/RESULTS.md), keeping the
history of earlier full runs."""

from __future__ import annotations

import re
from pathlib import Path

from harness import Section, Target

HISTORY_MARK = "<!-- history: bench/run adds one row per full run; bench/run --note TEXT says what changed -->"
HISTORY_HEADER = ("| date | commit | jq true ms | jq/srun | jq/python | Executor jobs/s | broker jobs/s | "
                  "jq cat MB/s | server idle MiB | bytes/queued job | note |\n"
                  "|---|---|---|---|---|---|---|---|---|---|---|")


def number(value: float | None) -> str:
    if value is None:
        return "–"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def verdict(target: Target) -> str:
    return {True: "**met**", False: "**not met**", None: "not measured"}[target.met]


def render(sections: list[Section], header: list[str], history: list[str], analysis: str = "") -> str:
    out = ["# jobqueue benchmark results", "", *header, "", "## Targets", "",
           "| target | measured | limit | verdict | note |", "|---|---|---|---|---|"]
    for section in sections:
        for t in section.targets:
            out.append(f"| {t.text} | {number(t.value)} {t.unit} | {number(t.limit)} {t.unit} | {verdict(t)} | "
                       f"{t.note} |")
        if section.error:
            out.append(f"| {section.title} | – | – | **crashed** | see its section |")
    if analysis:  # bench/ANALYSIS.md: what stands in the way of the missed targets, what was tried
        out += ["", analysis.strip()]
    for section in sections:
        out += ["", *render_section(section)]
    out += ["", "## History", "", HISTORY_MARK, "", HISTORY_HEADER, *history, ""]
    return "\n".join(out)


def render_section(section: Section) -> list[str]:
    out = [f"## {section.title}", ""]
    if section.error:
        out += ["**This scenario crashed:**", "", "```", section.error.strip(), "```", ""]
    if section.rows:
        out += ["| measurement | median | min | max | n | unit |", "|---|---|---|---|---|---|"]
        for row in section.rows:
            s = row.stats
            cells = [number(s.median), number(s.low), number(s.high), str(s.n)] if s else ["–"] * 4
            name = f"{row.name} ({row.note})" if row.note else row.name
            out.append(f"| {name} | {' | '.join(cells)} | {row.unit} |")
        out.append("")
    if section.ratios:
        out += ["| ratio (of medians, same run) | value |", "|---|---|"]
        out += [f"| {text} | {number(value)}{'×' if value is not None else ''} |" for text, value in section.ratios]
        out.append("")
    out += [f"- {note}" for note in section.notes]
    if section.notes:
        out.append("")
    if section.commands:
        out += ["Commands:", "", "```", *section.commands, "```", ""]
    for title, text in section.profiles:
        out += [f"<details><summary>Profile: {title}</summary>", "", "```", text.strip("\n"), "```", "",
                "</details>", ""]
    return out


def history_row(sections: list[Section], date: str, commit: str, note: str) -> str:
    by_key = {s.key: s for s in sections}

    def median(key: str, row: str) -> float | None:
        section = by_key.get(key)
        return section.median(row) if section else None

    def ratio(key: str, text: str) -> float | None:
        section = by_key.get(key)
        return next((v for t, v in section.ratios if t == text), None) if section else None

    def target(key: str, prefix: str) -> float | None:
        section = by_key.get(key)
        return next((t.value for t in section.targets if t.text.startswith(prefix)), None) if section else None

    cells = [date, commit, number(median("latency", "jq true")), number(ratio("latency", "jq true / srun true")),
             number(ratio("latency", "jq true / python3 -c pass")), number(median("throughput", "jobqueue.Executor")),
             number(target("broker", "Broker")), number(median("streaming", "jq cat")),
             number(median("memory", "server RSS, idle")), number(target("memory", "≤ 1024 bytes")),
             note.replace("|", "/")]
    return "| " + " | ".join(cells) + " |"


def old_history(path: Path) -> list[str]:
    """The history rows of an earlier RESULTS.md, if any."""
    if not path.exists():
        return []
    text = path.read_text()
    if HISTORY_MARK not in text:
        return []
    tail = text.split(HISTORY_MARK, 1)[1]
    return [line for line in tail.splitlines() if re.match(r"^\| \d{4}-", line)]
