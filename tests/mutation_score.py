"""The mutation score per package from mutmut's results (``mutants/**/*.meta``).

    python tests/mutation_score.py mutants                  # the table make mutation writes
    python tests/mutation_score.py mutants --sample 60      # 60 mutant names a package
    python tests/mutation_score.py mutants --names sample.txt   # the table of those only

A package whose mutants take hours to run (the torch tests behind ``repq/reparam``,
``repq/quant`` and ``repq/qat``) is scored on a uniform random sample of its mutants
(``--sample``, fixed ``--seed``; ``mutmut run $(cat sample.txt)`` runs them), with a
95% Wilson interval for the whole package's score.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

STATUSES = ("killed", "survived", "no tests", "timeout", "suspicious", "not checked")
CAUGHT = ("killed", "timeout")  # mutmut counts a mutant over its CPU budget as caught
Z95 = 1.959964


def mutants_by_package(mutants: Path) -> dict[str, dict[str, int | None]]:
    """Package (``repq/quant``) -> {mutant name: mutmut's exit code, None if not run}."""
    packages: dict[str, dict[str, int | None]] = {}
    for meta in sorted(mutants.glob("repq/**/*.py.meta")):
        package = str(meta.parent.relative_to(mutants))
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        packages.setdefault(package, {}).update(codes)
    return packages


def counts_by_package(
    packages: dict[str, dict[str, int | None]],
    status_of: Callable[[int | None], str],
    names: set[str] | None = None,
) -> dict[str, Counter]:
    """Package -> how many of its mutants (of ``names`` only, if given) ended in each
    status."""
    return {
        package: Counter(
            status_of(code) for name, code in codes.items() if names is None or name in names
        )
        for package, codes in packages.items()
        if names is None or names & codes.keys()
    }


def sample_names(
    packages: dict[str, dict[str, int | None]], per_package: int, seed: int
) -> list[str]:
    """``per_package`` mutant names drawn uniformly without replacement from each
    package (all of a smaller one), the same for the same seed and mutants."""
    rng = random.Random(seed)
    drawn = []
    for package in sorted(packages):
        names = sorted(packages[package])
        drawn += sorted(rng.sample(names, min(per_package, len(names))))
    return drawn


def wilson_interval(caught: int, total: int) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion ``caught / total``."""
    if total == 0:
        return 0.0, 1.0
    p, z2 = caught / total, Z95**2
    centre = (p + z2 / (2 * total)) / (1 + z2 / total)
    half = Z95 * math.sqrt(p * (1 - p) / total + z2 / (4 * total**2)) / (1 + z2 / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def markdown(packages: dict[str, Counter]) -> str:
    """One row per package and a total: the counts, the score (killed over all mutants)
    and the caught share (killed or timeout over the mutants that ran) with its 95%
    Wilson interval."""
    rows = ["| package | " + " | ".join(STATUSES) + " | score | caught of run (95% CI) |"]
    rows.append("|---" * (len(STATUSES) + 3) + "|")
    total = Counter()
    for package, counts in [*packages.items(), ("total", None)]:
        counts = total if counts is None else counts
        if package != "total":
            total.update(counts)
        score = counts["killed"] / max(1, sum(counts.values()))
        ran = sum(counts.values()) - counts["not checked"]
        caught = sum(counts[s] for s in CAUGHT)
        low, high = wilson_interval(caught, ran)
        share = f"{100 * caught / max(1, ran):.1f}% ({100 * low:.1f}-{100 * high:.1f})"
        cells = " | ".join(str(counts[s]) for s in STATUSES)
        rows.append(f"| {package} | {cells} | {100 * score:.1f}% | {share} |")
    return "\n".join(rows) + "\n"


def _read_names(path: Path | None) -> set[str] | None:
    return None if path is None else set(path.read_text().split())


def main(argv: Iterable[str] | None = None) -> None:
    from mutmut.stats import status_by_exit_code

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mutants", type=Path, nargs="?", default=Path("mutants"))
    parser.add_argument("--sample", type=int, help="print this many mutant names a package")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--packages", nargs="*", help="only these packages (repq/quant ...)")
    parser.add_argument("--names", type=Path, help="score only the mutants named in this file")
    args = parser.parse_args(argv)
    packages = mutants_by_package(args.mutants)
    if args.packages:
        packages = {p: codes for p, codes in packages.items() if p in args.packages}
    if args.sample:
        print("\n".join(sample_names(packages, args.sample, args.seed)))
        return
    status_of = status_by_exit_code.__getitem__
    print(markdown(counts_by_package(packages, status_of, _read_names(args.names))))


if __name__ == "__main__":
    main()
