"""analysis.verdicts: verdicts on synthetic runs.parquet tables whose answer is known (fast)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import REPO

from analysis.claims import CLAIMS
from analysis.report import claims_markdown, load_results
from analysis.runs_to_tables import RUNS_FILE
from analysis.verdicts import (
    CONTRADICTED,
    INCONCLUSIVE,
    REPRODUCED,
    TABLE_COLUMNS,
    claims_table,
)

# (recurrent_init, lam) of the five variants, in the paper's order
VARIANTS = ((False, 0.0), (True, 0.0), (True, 0.5), (True, 0.9), (True, 1.0))
FIGURES = [sys.executable, "analysis/figures.py"]


def run_row(variant: int, seed: int, **values: object) -> dict[str, object]:
    """Return one row of runs.parquet: an ordinary width-8 CIFAR-10 run unless overridden."""
    recurrent, lam = VARIANTS[variant]
    row: dict[str, object] = {
        "run_id": f"run-{variant}-{seed}-{values.get('model.block', 'ordinary')}",
        "experiment": "synthetic",
        "data.dataset": "cifar10",
        "model.width": 8,
        "model.block": "ordinary",
        "model.recurrent_init": recurrent,
        "coupling.lam": lam,
        "run.seed": seed,
        "model.bn_gamma_init": 1.0,
        "final_test_error": 0.2,
        "ci": 0.5,
        "ri": 0.97,
        "di": 0.3,
    }
    row.update(values)
    return row


def table_of(rows: list[dict[str, object]], tmp_path: Path) -> pd.DataFrame:
    """Write rows as results/runs.parquet and read them back as the report does."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(tmp_path / RUNS_FILE)
    runs, _ = load_results(tmp_path)
    return runs


def trend_rows(slope: float, seeds: int = 3) -> list[dict[str, object]]:
    """Return runs whose error and CI move by `slope` per variant and DI by -slope."""
    rng = np.random.default_rng(0)
    return [
        run_row(
            v,
            s,
            final_test_error=0.2 + slope * v + rng.normal(0, 0.005),
            ci=0.5 + slope * v + rng.normal(0, 0.005),
            di=0.5 - slope * v + rng.normal(0, 0.005),
        )
        for v in range(5)
        for s in range(seeds)
    ]


def verdicts(table: pd.DataFrame, *keys: str) -> list[str]:
    """Return the verdict of each claim key (one row each) in order."""
    return [table.loc[table["claim"] == key, "verdict"].item() for key in keys]


TRENDS = ("fig3b-error", "fig3a-ci", "fig3a-di")


def test_a_known_trend_is_reproduced(tmp_path: Path) -> None:
    table = claims_table(table_of(trend_rows(0.05), tmp_path))
    assert verdicts(table, *TRENDS) == [REPRODUCED] * 3
    row = table[table["claim"] == "fig3b-error"].iloc[0]
    assert row["estimate"] > 0.9 and 0 < row["low"] <= row["high"] <= 1
    assert (row["n"], row["dataset"], row["width"], row["variation"]) == (
        15,
        "cifar10",
        "8",
        "standard",
    )
    assert row["quote"].startswith('Results: "As Fig 3b shows, a higher coupling parameter')
    # Fig 3a's trend leaves out rec. 1, where the paper says it fails
    assert table.loc[table["claim"] == "fig3a-ci", "n"].item() == 12


def test_the_opposite_trend_is_contradicted(tmp_path: Path) -> None:
    table = claims_table(table_of(trend_rows(-0.05), tmp_path))
    assert verdicts(table, *TRENDS) == [CONTRADICTED] * 3


def test_torchvision_runs_count_in_no_claim(tmp_path: Path) -> None:
    # The ordinary runs without a model.arch column (older runs) are the preact ResNet; the
    # same runs as torchvision ResNets, with the opposite trend, must change no verdict.
    preact = trend_rows(0.05)
    torchvision = [
        {**row, "run_id": f"{row['run_id']}-tv", "model.arch": "torchvision-resnet18"}
        for row in trend_rows(-0.05)
    ]
    alone = claims_table(table_of(preact, tmp_path / "alone"))
    mixed = claims_table(table_of(preact + torchvision, tmp_path / "mixed"))
    pd.testing.assert_frame_equal(alone, mixed)
    assert verdicts(mixed, *TRENDS) == [REPRODUCED] * 3


def test_no_trend_is_inconclusive(tmp_path: Path) -> None:
    # Every variant holds the same three values: rank correlation 0, an interval around it.
    rows = [
        run_row(v, s, final_test_error=e, ci=e, di=e)
        for v in range(5)
        for s, e in enumerate((0.18, 0.2, 0.22))
    ]
    table = claims_table(table_of(rows, tmp_path))
    assert verdicts(table, *TRENDS) == [INCONCLUSIVE] * 3
    row = table[table["claim"] == "fig3b-error"].iloc[0]
    assert row["estimate"] == pytest.approx(0.0, abs=1e-12)
    assert row["low"] < 0 < row["high"] and row["reason"] == "interval straddles 0"


def test_too_few_runs_are_inconclusive(tmp_path: Path) -> None:
    one_seed = [r for r in trend_rows(0.05) if r["run.seed"] == 0]
    table = claims_table(table_of(one_seed, tmp_path))
    assert verdicts(table, *TRENDS) == [INCONCLUSIVE] * 3
    reason = table.loc[table["claim"] == "fig3b-error", "reason"].item()
    assert reason.startswith("too few runs (each variant needs 2)") and "rec. 0.5: 1" in reason
    assert table["low"].isna().all()
    one_variant = [r for r in trend_rows(0.05) if r["coupling.lam"] == 0.5]
    table = claims_table(table_of(one_variant, tmp_path / "one"))
    assert verdicts(table, "fig3b-error") == [INCONCLUSIVE]
    assert (
        table.loc[table["claim"] == "fig3b-error", "reason"].item().startswith("too few variants")
    )


@pytest.mark.parametrize(
    ("ri", "verdict"),
    [
        ((0.97, 0.98, 0.96), REPRODUCED),
        ((0.6, 0.62, 0.58), CONTRADICTED),
        ((0.8, 1.0, 0.9), INCONCLUSIVE),
    ],
)
def test_a_level_is_judged_against_the_papers_value(tmp_path: Path, ri, verdict: str) -> None:
    rows = [run_row(v, s, ri=value) for v in range(5) for s, value in enumerate(ri)]
    table = claims_table(table_of(rows, tmp_path))
    assert verdicts(table, "s1a-ri", "fig2b-ri") == [verdict, verdict]
    assert table.loc[table["claim"] == "s1a-ri", "estimate"].item() == pytest.approx(np.mean(ri))
    assert table.loc[table["claim"] == "s1a-ri", "threshold"].item() == "interval within 1 ± 0.1"


def test_convergent_blocks_are_compared_with_the_ordinary_one(tmp_path: Path) -> None:
    rows = [run_row(v, s, final_test_error=0.2 + 0.01 * s) for v in (0, 4) for s in range(2)]
    icr = [
        run_row(v, s, **{"model.block": "icr", "final_test_error": 0.3 + 0.01 * s, "di": 0.02})
        for v in (0, 4)
        for s in range(2)
    ]
    pcr = [
        run_row(v, s, **{"model.block": "pcr", "final_test_error": 0.1 + 0.01 * s, "di": 0.5})
        for v in (0, 4)
        for s in range(2)
    ]
    table = claims_table(table_of(rows + icr + pcr, tmp_path))
    assert verdicts(table, "fig4b-error-icr", "s2-error-pcr") == [REPRODUCED, CONTRADICTED]
    assert table.loc[table["claim"] == "fig4b-error-icr", "estimate"].item() == pytest.approx(0.1)
    assert table.loc[table["claim"] == "fig4b-error-icr", "n"].item() == 8
    assert verdicts(table, "fig4a-di-icr", "s2-di-pcr") == [REPRODUCED, CONTRADICTED]


def test_diverged_and_undefined_runs_are_counted(tmp_path: Path) -> None:
    rows = trend_rows(0.05)
    rows += [
        run_row(4, 3, final_test_error=0.9, ci=np.nan, ri=np.nan, di=np.nan),
        run_row(4, 4, final_test_error=0.9, ci=np.nan, ri=np.nan, di=np.nan),
    ]
    without = claims_table(table_of(rows, tmp_path))
    error = without[without["claim"] == "fig3b-error"].iloc[0]
    assert (error["n"], error["n_undefined"], error["n_diverged"]) == (17, 0, 0)
    ri = without[without["claim"] == "s1a-ri"].iloc[0]
    assert (ri["n"], ri["n_undefined"], ri["n_diverged"]) == (15, 2, 0)
    for row in rows:
        row["diverged"] = np.isnan(row["ri"])
    flagged = claims_table(table_of(rows, tmp_path / "flagged"))
    ri = flagged[flagged["claim"] == "s1a-ri"].iloc[0]
    assert (ri["n"], ri["n_undefined"], ri["n_diverged"]) == (15, 2, 2)
    # Diverged runs stay in the error statistics, at the error they ended with.
    assert flagged.loc[flagged["claim"] == "fig3b-error", "n_diverged"].item() == 2
    assert flagged.loc[flagged["claim"] == "fig3b-error", "n"].item() == 17


def test_groups_per_dataset_width_and_variation(tmp_path: Path) -> None:
    rows = trend_rows(0.05)
    rows += [{**r, "run_id": r["run_id"] + "-w16", "model.width": 16} for r in trend_rows(0.05)]
    rows += [
        {**r, "run_id": r["run_id"] + "-bn", "model.bn_gamma_init": 0.1} for r in trend_rows(-0.05)
    ]
    table = claims_table(table_of(rows, tmp_path))
    error = table[table["claim"] == "fig3b-error"]
    assert list(error["width"]) == ["8", "16"] and set(error["variation"]) == {"standard"}
    varied = table[table["claim"] == "s4-error"]
    assert list(varied["variation"]) == ["BN γ 0.1"] and list(varied["verdict"]) == [CONTRADICTED]
    # Fig 3c's points span widths: one row over all widths; its lines: one row per width
    assert list(table.loc[table["claim"] == "fig3c-ci-error", "width"]) == ["all"]
    assert list(table.loc[table["claim"] == "fig3c-lines-ci", "width"]) == ["8", "16"]


def test_fig3c_across_widths_needs_two_widths(tmp_path: Path) -> None:
    table = claims_table(table_of(trend_rows(0.05), tmp_path))
    row = table[table["claim"] == "fig3c-ci-error"].iloc[0]
    assert row["verdict"] == INCONCLUSIVE and row["reason"].startswith("one width (8)")


def test_the_table_is_deterministic_and_printed(tmp_path: Path) -> None:
    runs = table_of(trend_rows(0.02, seeds=2), tmp_path)
    first, second = claims_table(runs), claims_table(runs)
    pd.testing.assert_frame_equal(first, second)
    assert list(first.columns) == list(TABLE_COLUMNS)
    text = claims_markdown(first)
    assert all(f"**{claim.key}**" in text for claim in CLAIMS)
    assert "| fig3b-error | CIFAR-10 | full | standard | 8 | Spearman ρ(variant, error) |" in text


def test_report_writes_the_claims_table(tmp_path: Path) -> None:
    results = tmp_path / "results"
    table_of(trend_rows(0.05), results)
    out = tmp_path / "figures"
    done = subprocess.run(
        [*FIGURES, "--results", str(results), "--out", str(out), "--only", "fig3", "--report"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    written = pd.read_csv(out / "claims.csv", keep_default_na=False, na_values=[""])
    assert list(written.columns) == list(TABLE_COLUMNS)
    assert written.loc[written["claim"] == "fig3b-error", "verdict"].item() == REPRODUCED
    summary = (out / "summary.md").read_text()
    assert "## The paper's claims, checked on these runs" in summary
    assert summary.index("## The paper's claims") < summary.index("## Per condition")


PATHFINDER_TRENDS = (
    "pathfinder-hypothesis-error",
    "pathfinder-finding-error",
    "pathfinder-ci",
    "pathfinder-di",
)


def test_pathfinder_states_the_papers_finding_and_its_hypothesis(tmp_path: Path) -> None:
    # Error falls with coupling on Pathfinder: the hypothesis holds, the paper's finding not.
    falling = [
        {**row, "run_id": f"{row['run_id']}-pf", "data.dataset": "pathfinder-9"}
        for row in trend_rows(-0.05)
    ]
    table = claims_table(table_of(falling + trend_rows(0.05), tmp_path))
    # ... and the CI falls, the DI rises (trend_rows moves them with the error): Fig 3a's
    # trend is contradicted there.
    assert verdicts(table, *PATHFINDER_TRENDS) == [REPRODUCED] + [CONTRADICTED] * 3
    pathfinder = table[table["claim"].str.startswith("pathfinder-")]
    assert set(pathfinder["dataset"]) == {"pathfinder-9"} and set(pathfinder["n"]) == {15, 12}
    hypothesis = table[table["claim"] == "pathfinder-hypothesis-error"].iloc[0]
    assert hypothesis["threshold"] == "interval < 0" and "Pathfinder or cABC" in hypothesis["quote"]
    # The paper's claims stay on the paper's datasets, where the error rises.
    paper = table[~table["claim"].str.startswith("pathfinder-")]
    assert set(paper["dataset"]) == {"cifar10"}
    assert verdicts(table, *TRENDS) == [REPRODUCED] * 3


def test_without_pathfinder_runs_its_claims_are_not_checked(tmp_path: Path) -> None:
    table = claims_table(table_of(trend_rows(0.05), tmp_path))
    assert not table["claim"].str.startswith("pathfinder-").any()
    text = claims_markdown(table)
    unchecked = next(line for line in text.splitlines() if line.startswith("Not checked"))
    assert all(key in unchecked for key in PATHFINDER_TRENDS)
