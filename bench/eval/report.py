"""The evaluation's table and JSON: per mode, the four metrics per category and overall,
then the results that came from another scope (leaks), the corrected facts returned, and
the queries answered with nothing confident: right for an unanswerable query, wrong for
one the scope answers (which the ranking metrics do not see)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.eval.dataset import CATEGORIES
from bench.eval.metrics import Score, mean
from bench.eval.run import Answer, Evaluation, ModeRun, median_ms

HEADER = ("category", "queries", "R@1", "R@5", "MRR", "nDCG@10")


def by_category(answers: Sequence[Answer]) -> dict[str, list[Answer]]:
    grouped: dict[str, list[Answer]] = {c: [] for c in CATEGORIES}
    for answer in answers:
        grouped.setdefault(answer.query.category, []).append(answer)
    return {c: found for c, found in grouped.items() if found}


def summary(run: ModeRun) -> dict[str, Any]:
    """What the table shows of one mode, as data."""
    if run.unavailable is not None:
        return {"available": False, "reason": run.unavailable}
    answers = run.answers
    unanswerable = [a for a in answers if not a.query.relevant]
    answerable = [a for a in answers if a.query.relevant]

    def scores(found: Sequence[Answer]) -> dict[str, Any]:
        score = mean([a.score for a in found])
        return {"queries": len(found), **(asdict(score) if score else {})}

    return {
        "available": True,
        "sent_mode": run.sent_as,
        "categories": {c: scores(found) for c, found in by_category(answers).items()},
        "overall": scores(answers),
        "leaks": sum(a.leaks for a in answers),
        "leaking_queries": sum(1 for a in answers if a.leaks),
        "superseded_returned": sum(a.superseded for a in answers),
        "unanswerable": len(unanswerable),
        "unanswerable_abstained": sum(1 for a in unanswerable if not a.confident),
        # The other side of abstaining: a reply that says "nothing confident" to a
        # question the scope answers. Ranking metrics do not see it; this count does.
        "answerable": len(answerable),
        "answerable_abstained": sum(1 for a in answerable if not a.confident),
        "median_ms": median_ms(answers),
    }


def _row(name: str, count: int, score: Score | None) -> tuple[str, ...]:
    if score is None:
        return (name, str(count), "-", "-", "-", "-")
    values = (score.recall_1, score.recall_5, score.mrr, score.ndcg_10)
    return (name, str(count), *(f"{v:.3f}" for v in values))


def _render(lines: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    out = []
    for line in lines:
        pairs = enumerate(zip(line, widths, strict=True))
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs]
        out.append("  ".join(cells))
    out.insert(1, "  ".join("-" * w for w in widths))
    return out


def mode_text(run: ModeRun) -> str:
    if run.unavailable is not None:
        return f"mode {run.mode}: unavailable (memory.search answered: {run.unavailable})"
    sent = f"mode={run.sent_as}" if run.sent_as else "without `mode`"
    lines: list[tuple[str, ...]] = [HEADER]
    for category, found in by_category(run.answers).items():
        lines.append(_row(category, len(found), mean([a.score for a in found])))
    lines.append(_row("overall", len(run.answers), mean([a.score for a in run.answers])))
    data = summary(run)
    return "\n".join(
        [
            f"mode {run.mode} (memory.search {sent}; median {data['median_ms']:.1f} ms a query)",
            *_render(lines),
            f"cross-scope leaks: {data['leaks']} results from another scope "
            f"(in {data['leaking_queries']} queries)",
            f"superseded facts returned: {data['superseded_returned']}",
            f"answered with nothing confident: {data['unanswerable_abstained']} of "
            f"{data['unanswerable']} unanswerable queries (right), "
            f"{data['answerable_abstained']} of {data['answerable']} answerable ones (wrong)",
        ]
    )


def comparison(runs: Sequence[ModeRun]) -> str | None:
    """The overall figures of the modes that ran side by side (the issue asks hybrid to
    beat both single modes on the whole set), or None when fewer than two ran."""
    ran = [run for run in runs if run.unavailable is None]
    if len(ran) < 2:
        return None
    lines: list[tuple[str, ...]] = [("mode", *HEADER[1:])]
    lines += [_row(run.mode, len(run.answers), mean([a.score for a in run.answers])) for run in ran]
    return "\n".join(["overall, mode by mode", *_render(lines)])


def text(evaluation: Evaluation) -> str:
    parts = [mode_text(run) for run in evaluation.runs]
    side_by_side = comparison(evaluation.runs)
    if side_by_side is not None:
        parts.append(side_by_side)
    parts += [f"- {note}" for note in evaluation.notes]
    return "\n\n".join(parts)


def write_json(path: Path, meta: dict[str, Any], evaluation: Evaluation) -> None:
    document = {
        "meta": meta,
        "notes": evaluation.notes,
        "modes": {run.mode: summary(run) for run in evaluation.runs},
        "answers": {
            run.mode: [
                {
                    "id": a.query.id,
                    "category": a.query.category,
                    "split": a.query.split,
                    "ranking": a.ranking,
                    "confident": a.confident,
                    "leaks": a.leaks,
                    "superseded": a.superseded,
                    **asdict(a.score),
                }
                for a in run.answers
            ]
            for run in evaluation.runs
        },
    }
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
