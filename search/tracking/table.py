"""The results table, in the layout of the papers: ID, each domain shift and their mean, each
zero-shot set and their mean, context accuracy. Used by the CLI, the report and BENCHMARKS.md."""
from __future__ import annotations

from trainables import metrics as M


def columns(rows: dict[str, dict[str, float]]) -> list[tuple[str, str]]:
    """(metric key, short header) for every metric present in any row, in paper order."""
    keys = {k for r in rows.values() for k in r}
    ordered: list[tuple[str, str]] = [(M.ID_VAL, "ID val"), (M.ID_TEST, "ID test")]
    ordered += [(k, k.split("/")[1]) for k in sorted(keys)
                if k.startswith("ood/") and k != M.OOD_AVG]
    ordered.append((M.OOD_AVG, "avg shift"))
    ordered += [(k, k.split("/")[1]) for k in sorted(keys)
                if k.startswith("zeroshot/") and k != M.ZEROSHOT_AVG]
    ordered.append((M.ZEROSHOT_AVG, "avg zero-shot"))
    ordered += [(k, "ctx " + k.split("/")[1]) for k in sorted(keys) if k.startswith("context/")]
    return [(k, h) for k, h in ordered if k in keys]


def format_table(rows: dict[str, dict[str, float]],
                 spread: dict[str, dict[str, float]] | None = None,
                 markdown: bool = False) -> str:
    """Rows of accuracies (%) as an aligned text table, or a Markdown table; ``spread`` adds ±."""
    cols = columns(rows)

    def cell(row: str, key: str) -> str:
        value = rows[row].get(key)
        if value is None:
            return "–"
        if spread and key in spread.get(row, {}):
            return f"{value:.1f}±{spread[row][key]:.1f}"
        return f"{value:.1f}"

    header = ["model"] + [h for _, h in cols]
    body = [[name] + [cell(name, k) for k, _ in cols] for name in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                              for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt(header), "  ".join("-" * w for w in widths)] + [fmt(r) for r in body])
