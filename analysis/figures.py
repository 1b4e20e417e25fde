"""Draw the paper's figures from results/*.parquet into figures/ (PNG and PDF).

Usage: python analysis/figures.py [--results results/] [--out figures/] [--only NAME ...] [--report]
Figures: fig1 (toy problem, trained here), fig2, fig3, fig4, s1, s2, s3, s4, s5, and beyond
the paper pathfinder (Fig 3's panels on Pathfinder-6/9/14).
--report also writes figures/summary.md (per condition mean +/- sd, beside the paper's values,
and the paper's claims checked on these runs) and figures/claims.csv (docs/claims.md).
Diverged runs count at chance error unless --exclude-diverged; --error digit draws
Digitclutter's digit error instead of its image error (docs/method.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from analysis.conditions import ERRORS
from analysis.paper_figures import ALL_FIGURES, draw_all
from analysis.report import claims_markdown, load_results, write_summary
from analysis.verdicts import claims_table, write_claims


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, draw the figures (and the summary); return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--results", default="results", help="directory of runs/curves.parquet (default: results)"
    )
    parser.add_argument(
        "--out", default="figures", help="directory for the figures (default: figures)"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        choices=ALL_FIGURES,
        help=f"draw only these figures, of: {', '.join(ALL_FIGURES)}",
    )
    parser.add_argument(
        "--report", action="store_true", help="also write summary.md and claims.csv"
    )
    parser.add_argument(
        "--error",
        choices=ERRORS,
        default="image",
        help="Digitclutter's error: image (all n digits in the top n; default) or digit "
        "(fraction of digits missed)",
    )
    parser.add_argument(
        "--exclude-diverged",
        action="store_true",
        help="leave diverged runs out of the error panels and means (default: at chance)",
    )
    args = parser.parse_args(argv)
    if not Path(args.results).is_dir():
        print(
            f"error: --results {args.results}: no such directory "
            "(python analysis/aggregate.py --out DIR writes it)",
            file=sys.stderr,
        )
        return 2
    try:
        runs, curves = load_results(args.results, args.error, args.exclude_diverged)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if runs is None:
        print(f"no tables in {args.results}: only fig1 can be drawn", file=sys.stderr)
    draw_all(runs, curves, args.out, args.only)
    if args.report:
        if runs is None:
            print("skipped summary.md: no runs", file=sys.stderr)
        else:
            claims = claims_table(runs)
            print(f"wrote {write_summary(runs, args.out, [claims_markdown(claims)])}")
            print(f"wrote {write_claims(claims, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
