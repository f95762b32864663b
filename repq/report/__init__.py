"""Tables, claims and figures from a workflow's evaluations."""

from __future__ import annotations

from pathlib import Path


def write_report(runs: Path, out: Path) -> list[Path]:
    """Every table (one per task, every measured value, each run seed by seed), the
    claims table with its claim x variant verdicts and each variant's effect on the
    claims against the base, the Δ figure from the evaluations
    under ``runs``, and the deployed models' table from its exports (if any), written
    into ``out``."""
    from repq.report.claims import (
        claims_table,
        effects_markdown,
        to_markdown,
        variant_effects,
        verdicts_table,
    )
    from repq.report.deployment import write_deployment
    from repq.report.figures import drop_figure
    from repq.report.tables import collect, markdown_text, write_tables

    results = collect(runs)
    write_tables(results, out)
    claims = claims_table(results)
    claims.to_csv(out / "claims.csv", index=False)
    (out / "claims.md").write_text(to_markdown(claims))
    verdicts = verdicts_table(claims)
    verdicts.to_csv(out / "verdicts.csv", index=False)
    (out / "verdicts.md").write_text(markdown_text(verdicts))
    effects = variant_effects(results)
    effects.to_csv(out / "effects.csv", index=False)
    (out / "effects.md").write_text(effects_markdown(effects))
    drop_figure(results, out / "drop")
    write_deployment(runs, out)
    return sorted(out.glob("*.*"))
