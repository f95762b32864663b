"""The mutation score per package from mutmut's results (``mutants/**/*.meta``), as the
Markdown table that ``make mutation`` writes to ``tests/mutation-score.md``."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code

STATUSES = ("killed", "survived", "no tests", "timeout", "suspicious", "not checked")


def counts_by_package(mutants: Path) -> dict[str, Counter]:
    """Package (``repq/quant``) -> how many of its mutants ended in each status."""
    packages: dict[str, Counter] = {}
    for meta in sorted(mutants.glob("repq/**/*.py.meta")):
        package = str(meta.parent.relative_to(mutants))
        codes = json.loads(meta.read_text())["exit_code_by_key"].values()
        statuses = Counter(status_by_exit_code[code] for code in codes)
        packages.setdefault(package, Counter()).update(statuses)
    return packages


def markdown(packages: dict[str, Counter]) -> str:
    """One row per package and a total; the score is killed over all mutants."""
    rows = ["| package | " + " | ".join(STATUSES) + " | score |"]
    rows.append("|---" * (len(STATUSES) + 2) + "|")
    total = Counter()
    for package, counts in [*packages.items(), ("total", None)]:
        counts = total if counts is None else counts
        if package != "total":
            total.update(counts)
        score = counts["killed"] / max(1, sum(counts.values()))
        cells = " | ".join(str(counts[s]) for s in STATUSES)
        rows.append(f"| {package} | {cells} | {100 * score:.1f}% |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown(counts_by_package(Path(sys.argv[1] if len(sys.argv) > 1 else "mutants"))))
