"""Markdown tables for Dagster metadata, shared by the assets."""

import pandas as pd


def md_table(frame: pd.DataFrame, limit: int = 15) -> str:
    if frame.empty:
        return "_none_"
    head = frame.head(limit)
    lines = ["| " + " | ".join(head.columns) + " |", "|" + "---|" * len(head.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in head.itertuples(index=False)]
    if len(frame) > limit:
        lines.append(f"\n… and {len(frame) - limit} more")
    return "\n".join(lines)
