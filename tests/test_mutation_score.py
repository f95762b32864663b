"""The mutation score tool: sampling, restriction to a sample, and the interval."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from mutation_score import (
    counts_by_package,
    markdown,
    mutants_by_package,
    sample_names,
    wilson_interval,
)

STATUS = {1: "killed", 0: "survived", 36: "timeout", None: "not checked"}.__getitem__


def _mutants(tmp_path: Path) -> Path:
    """Two packages: ``repq/qat`` (3 mutants) and ``repq/quant`` (over two files, 10)."""
    files = {
        "repq/qat/methods.py.meta": {"q.a__mutmut_1": 1, "q.a__mutmut_2": 0, "q.b__mutmut_1": None},
        "repq/quant/lsq.py.meta": {f"l.f__mutmut_{i}": 1 for i in range(1, 7)},
        "repq/quant/init.py.meta": {
            "i.g__mutmut_1": 36,
            "i.g__mutmut_2": 0,
            "i.g__mutmut_3": 1,
            "i.g__mutmut_4": None,
        },
    }
    for name, codes in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"exit_code_by_key": codes}))
    return tmp_path


def test_every_mutant_is_counted_under_its_package(tmp_path):
    counts = counts_by_package(mutants_by_package(_mutants(tmp_path)), STATUS)
    assert counts == {
        "repq/qat": Counter({"killed": 1, "survived": 1, "not checked": 1}),
        "repq/quant": Counter({"killed": 7, "timeout": 1, "survived": 1, "not checked": 1}),
    }


def test_a_sample_draws_without_replacement_per_package_and_repeats_with_its_seed(tmp_path):
    packages = mutants_by_package(_mutants(tmp_path))
    drawn = sample_names(packages, 4, seed=0)
    assert len(drawn) == len(set(drawn)) == 3 + 4  # all of repq/qat, 4 of the 10
    assert {n for n in drawn if n.startswith("q.")} == set(packages["repq/qat"])
    assert sample_names(packages, 4, seed=0) == drawn
    draws = {tuple(sample_names(packages, 4, seed)) for seed in range(20)}
    assert len(draws) > 10  # the seed changes the draw
    seen = Counter(n for seed in range(2000) for n in sample_names(packages, 4, seed)[3:])
    # uniform: each of the 10 drawn 2000 * 4/10 = 800 times; binomial sd about 22
    assert set(seen) == set(packages["repq/quant"])
    assert all(abs(count - 800) < 100 for count in seen.values()), seen


def test_a_restricted_table_counts_only_the_named_mutants(tmp_path):
    packages = mutants_by_package(_mutants(tmp_path))
    names = {"i.g__mutmut_1", "i.g__mutmut_2", "l.f__mutmut_1"}
    counts = counts_by_package(packages, STATUS, names)
    assert counts == {"repq/quant": Counter({"killed": 1, "timeout": 1, "survived": 1})}
    table = markdown(counts)
    # killed 1 of 3 (33.3%); caught (killed or timeout) 2 of the 3 that ran
    assert "| repq/quant | 1 | 1 | 0 | 1 | 0 | 0 | 33.3% | 66.7% (20.8-93.9) |" in table


@pytest.mark.parametrize(
    ("caught", "total", "low", "high"),
    [
        # p = 0.9: centre (0.9 + 1.92/50) / 1.0768 = 0.8715,
        # half 1.96 * sqrt(0.09/50 + 3.8415/10000) / 1.0768 = 0.0851
        (45, 50, 0.7864, 0.9565),
        (2, 3, 0.2077, 0.9385),
        (10, 10, 0.7225, 1.0),
        (0, 10, 0.0, 0.2775),
    ],
)
def test_the_wilson_interval_against_hand_computed_values(caught, total, low, high):
    assert wilson_interval(caught, total) == pytest.approx((low, high), abs=5e-5)
