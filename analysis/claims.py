"""The paper's claims: its words, where it makes them, and which runs and statistic test each.

- trend: Spearman's rank correlation between a run's variant, in the paper's order (non-rec.
  < rec. 0 < rec. 0.5 < rec. 0.9 < rec. 1), and its error or index, over runs.
- level: the mean over runs against the paper's value, within a stated tolerance.
- difference: convergent (ICR or PCR) minus ordinary mean error, averaged over the variants
  both have.
- relation / no relation: Spearman's rank correlation between an index and the error, over
  runs of several widths (Fig 3c's points) or of one width (its lines).

The paper's claims are tested on its six datasets; beyond the paper, the trends are tested on
Pathfinder too (PATHFINDER_CLAIMS), where the paper's finding (error rises with coupling) and
its hypothesis for such a task (error falls with coupling) are both stated, each with a verdict.

The tolerances are fixed here and documented in docs/claims.md, before any result is seen;
the statistics that judge the claims are analysis/verdicts.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vocabulary import BLOCK_LABELS, FULL, PAPER_DATASETS, PAPER_VARIANTS, PATHFINDER, STANDARD

# Fixed in advance (docs/claims.md); not to be tuned to a result.
INDEX_TOLERANCE = 0.1  # "close to 1" / "near 0" on the indices' [0, 1] scale
NO_RELATION_MARGIN = 0.5  # "no clear relationship": |rho| below this
UP_TO_REC_09 = PAPER_VARIANTS[:4]  # Fig 3a's trend: the paper says it fails at rec. 1

TREND, LEVEL, DIFFERENCE, RELATION, NO_RELATION = (
    "trend",
    "level",
    "difference",
    "relation",
    "no relation",
)
ORDINARY, ICR, PCR = (BLOCK_LABELS[b] for b in ("ordinary", "icr", "pcr"))
PAPER_TASKS = {"dataset": PAPER_DATASETS}  # the paper's claims are about its own datasets
ORDINARY_MAIN = {**PAPER_TASKS, "block": ORDINARY, "variation": STANDARD, "train_size": FULL}


@dataclass(frozen=True)
class SummaryRow:
    """How summary.md sets a level claim's value beside ours: what it is, the paper's words."""

    quantity: str  # what is measured, in words
    excerpt: str = ""  # the paper's words, short, and where; "" for the claim's quote
    relation: str = "≈"  # "=" for a reported number, "≈" for "near" / "almost"
    # The paper's own conditions, beyond the claim's levels (which range over all datasets).
    where: dict[str, object] = field(default_factory=lambda: {"dataset": "cifar10"})
    # Where the paper's conditions are absent, compare on the datasets and widths present
    # (a claim about an index holds for any task; an error rate only for its own).
    relaxable: tuple[str, ...] = ("dataset", "width")


@dataclass(frozen=True)
class Claim:
    """One claim of the paper: its words, where it is made, and how our runs test it."""

    key: str  # short name, e.g. "fig3b-error"
    source: str  # where the paper makes it
    quote: str  # the paper's words
    kind: str  # TREND, LEVEL, DIFFERENCE, RELATION or NO_RELATION
    column: str  # the run column tested: error, ci, ri or di
    levels: dict[str, object]  # condition columns -> level the runs must have
    direction: int = 1  # TREND, DIFFERENCE, RELATION: +1 rising, -1 falling
    target: float = 0.0  # LEVEL: the paper's value
    variants: tuple[str, ...] = PAPER_VARIANTS  # the variants the claim is about
    other: str = ""  # RELATION, NO_RELATION: the second column (error)
    versus: str = ""  # DIFFERENCE: the block compared with the ordinary one
    group_by: tuple[str, ...] = ("dataset", "train_size", "variation", "width")
    not_levels: dict[str, object] = field(default_factory=dict)  # columns -> level excluded
    summary: SummaryRow | None = None  # LEVEL: its row of the paper's values beside ours

    def threshold(self) -> str:
        """Return the region of the statistic in which the claim is reproduced, in words."""
        if self.kind == LEVEL:
            return f"interval within {self.target:g} ± {INDEX_TOLERANCE:g}"
        if self.kind == NO_RELATION:
            return f"interval within ±{NO_RELATION_MARGIN:g}"
        return "interval > 0" if self.direction > 0 else "interval < 0"

    def statistic(self) -> str:
        """Return the statistic's name as the table prints it."""
        if self.kind == TREND:
            return f"Spearman ρ(variant, {self.column})"
        if self.kind == LEVEL:
            return f"mean {self.column}"
        if self.kind == DIFFERENCE:
            return f"mean {self.column}: {self.versus} − ordinary"
        return f"Spearman ρ({self.column}, {self.other})"

    def summary_levels(self) -> dict[str, object]:
        """Return the condition levels of the runs that summary.md sets beside the paper."""
        assert self.summary is not None, f"{self.key} has no row beside ours"
        return {**self.levels, **self.summary.where}

    def beside_ours(self, ours: str, count: int) -> str:
        """Return the summary.md row of the paper's value beside ours (mean ± sd, count)."""
        assert self.summary is not None, f"{self.key} has no row beside ours"
        paper = f"{self.target * 100:.3g}%" if self.column == "error" else f"{self.target:g}"
        row = self.summary
        ours = ours if count else "no runs"
        words = row.excerpt or self.quote
        return f"| {row.quantity} | {row.relation} {paper} | {ours} | {count} | {words} |"


FIG3B = (
    'Results: "As Fig 3b shows, a higher coupling parameter consistently leads to a higher '
    'error rate, both for CIFAR-10 and Digitclutter."'
)
FIG3A = (
    'Results: "As Fig 3a shows, soft gradient coupling indeed improves iterative convergence, '
    "increasing the Convergence Index and decreasing the Divergence Index. [...] Notably, this "
    'trend appears to not hold up for a fully recurrent ResNet" (so rec. 1 is left out)'
)
VARIATIONS = (
    'Discussion: "These variations did not have an overall effect on our findings"; S1 '
    'Appendix: "the findings on these variations were consistent with the results presented '
    'in the main article."'
)
FIG3C = (
    'Results: "Fig 3c demonstrates that performance is higher for ResNets with a higher '
    'Convergence Index and a lower Divergence Index."'
)
FIG3C_LINES = (
    'Results: "When controlling for the number of parameters (see lines in Fig 3c), we find no '
    'clear relationship between Convergence and Divergence Index and performance."'
)
FIG4B = (
    'Results: "Convergence regularization led to a higher error rate across all coupling '
    'parameters and architectures."'
)
FIG4A = (
    'Results: "Both the properly and improperly convergent ResNets have a high Convergence '
    'Index as well as a Divergence Index at almost zero"'
)
TRAINING_VARIED = {**PAPER_TASKS, "block": ORDINARY, "train_size": FULL}
WIDTH_16_NON_REC = {"dataset": "cifar10", "width": 16, "variant": "non-rec."}  # Fig 2's network
ACROSS_WIDTHS = ("dataset", "train_size", "variation")

# Beyond the paper: Pathfinder, the task its Discussion names for iterative computations over
# long-range context. Fig 3's trends on the ordinary ResNets of each difficulty, the error's
# in both readings: the paper's finding on its own tasks and its hypothesis for this one.
PATHFINDER_MAIN = {**ORDINARY_MAIN, "dataset": PATHFINDER}
PATHFINDER_HYPOTHESIS = (
    'Introduction: "a ResNet with iteratively convergent behavior may still have a better '
    'inductive bias"; Discussion: "Future research may benefit from tasks for which high '
    "performance necessitates iterative computations uncovering long-range context. This may "
    'be the case, for example, for Pathfinder or cABC." (so there, error falls with coupling)'
)
PATHFINDER_CLAIMS: tuple[Claim, ...] = (
    Claim(
        "pathfinder-finding-error",
        "Fig 3b's finding, on Pathfinder",
        FIG3B,
        TREND,
        "error",
        PATHFINDER_MAIN,
        +1,
    ),
    Claim(
        "pathfinder-hypothesis-error",
        "Introduction, Discussion: the hypothesis, on Pathfinder",
        PATHFINDER_HYPOTHESIS,
        TREND,
        "error",
        PATHFINDER_MAIN,
        -1,
    ),
    Claim(
        "pathfinder-ci",
        "Fig 3a's trend, on Pathfinder",
        FIG3A,
        TREND,
        "ci",
        PATHFINDER_MAIN,
        +1,
        variants=UP_TO_REC_09,
    ),
    Claim(
        "pathfinder-di",
        "Fig 3a's trend, on Pathfinder",
        FIG3A,
        TREND,
        "di",
        PATHFINDER_MAIN,
        -1,
        variants=UP_TO_REC_09,
    ),
)
CLAIMS: tuple[Claim, ...] = (
    Claim("fig3b-error", "Fig 3b, S3 Fig", FIG3B, TREND, "error", ORDINARY_MAIN, +1),
    Claim("fig3a-ci", "Fig 3a", FIG3A, TREND, "ci", ORDINARY_MAIN, +1, variants=UP_TO_REC_09),
    Claim("fig3a-di", "Fig 3a", FIG3A, TREND, "di", ORDINARY_MAIN, -1, variants=UP_TO_REC_09),
    Claim(
        "fig2b-ri",
        "Fig 2b",
        'Results: "the RI, across all stages, is close to 1.0" (the non-recurrent ResNet)',
        LEVEL,
        "ri",
        ORDINARY_MAIN,
        target=1.0,
        variants=("non-rec.",),
        summary=SummaryRow(
            "RI, ordinary ResNet, width 16, non-rec. (Fig 2b)",
            'Results: "the RI, across all stages, is close to 1.0"',
            where=WIDTH_16_NON_REC,
        ),
    ),
    Claim(
        "s1a-ri",
        "S1 Fig a",
        'Results: "The Recurrence Index is centered closely around 1 (see S1 Fig)."',
        LEVEL,
        "ri",
        ORDINARY_MAIN,
        target=1.0,
        summary=SummaryRow(
            "RI of coupled ResNets, CIFAR-10, all couplings and widths",
            'Results: "The Recurrence Index is centered closely around 1" (S1 Fig a)',
        ),
    ),
    Claim(
        "s1b-ri-icr",
        "S1 Fig b",
        'Results: "The Recurrence Index is again centered around one (see S1 Fig)." (ICRs)',
        LEVEL,
        "ri",
        {**ORDINARY_MAIN, "block": ICR},
        target=1.0,
        summary=SummaryRow(
            "RI of ICRs, CIFAR-10, all couplings and widths",
            'Results: "The Recurrence Index is again centered around one" (S1 Fig b)',
        ),
    ),
    Claim(
        "fig4a-di-icr",
        "Fig 4a",
        FIG4A,
        LEVEL,
        "di",
        {**ORDINARY_MAIN, "block": ICR},
        target=0.0,
        summary=SummaryRow(
            "DI of ICRs, CIFAR-10, all couplings and widths",
            'Results: "a Divergence Index at almost zero" (Fig 4a)',
        ),
    ),
    Claim(
        "s2-di-pcr",
        "S2 Fig",
        FIG4A,
        LEVEL,
        "di",
        {**ORDINARY_MAIN, "block": PCR},
        summary=SummaryRow(
            "DI of PCRs, CIFAR-10, all couplings and widths",
            'Results: "a Divergence Index at almost zero" (S2 Fig)',
        ),
    ),
    Claim(
        "fig4b-error-icr",
        "Fig 4b",
        FIG4B,
        DIFFERENCE,
        "error",
        {**PAPER_TASKS, "variation": STANDARD, "train_size": FULL},
        +1,
        versus=ICR,
    ),
    Claim(
        "s2-error-pcr",
        "S2 Fig",
        FIG4B,
        DIFFERENCE,
        "error",
        {**PAPER_TASKS, "variation": STANDARD, "train_size": FULL},
        +1,
        versus=PCR,
    ),
    Claim(
        "fig3c-ci-error",
        "Fig 3c",
        FIG3C,
        RELATION,
        "ci",
        ORDINARY_MAIN,
        -1,
        other="error",
        group_by=ACROSS_WIDTHS,
    ),
    Claim(
        "fig3c-di-error",
        "Fig 3c",
        FIG3C,
        RELATION,
        "di",
        ORDINARY_MAIN,
        +1,
        other="error",
        group_by=ACROSS_WIDTHS,
    ),
    Claim("fig3c-lines-ci", "Fig 3c", FIG3C_LINES, NO_RELATION, "ci", ORDINARY_MAIN, other="error"),
    Claim("fig3c-lines-di", "Fig 3c", FIG3C_LINES, NO_RELATION, "di", ORDINARY_MAIN, other="error"),
    Claim(
        "s4-error",
        "S4 Fig (Fig 3b's trend)",
        VARIATIONS,
        TREND,
        "error",
        TRAINING_VARIED,
        +1,
        not_levels={"variation": STANDARD},
    ),
    Claim(
        "s5-ci",
        "S5 Fig (Fig 3a's trend)",
        VARIATIONS,
        TREND,
        "ci",
        TRAINING_VARIED,
        +1,
        variants=UP_TO_REC_09,
        not_levels={"variation": STANDARD},
    ),
    Claim(
        "s5-di",
        "S5 Fig (Fig 3a's trend)",
        VARIATIONS,
        TREND,
        "di",
        TRAINING_VARIED,
        -1,
        variants=UP_TO_REC_09,
        not_levels={"variation": STANDARD},
    ),
    *PATHFINDER_CLAIMS,  # beyond the paper
)

# A number the paper reports of its baseline, not a finding: set beside ours in summary.md,
# never judged (docs/claims.md fixes no tolerance for an error rate).
BASELINE_ERROR = Claim(
    "baseline-error",
    "Results",
    'Results: "The ResNet achieved 5.2% classification error"',
    LEVEL,
    "error",
    ORDINARY_MAIN,
    target=0.052,
    variants=("non-rec.",),
    summary=SummaryRow(
        "CIFAR-10 error, ordinary ResNet, width 16, non-rec.",
        relation="=",
        where=WIDTH_16_NON_REC,
        relaxable=(),
    ),
)
_BY_KEY = {claim.key: claim for claim in CLAIMS}
# summary.md's "paper's values beside ours", in its order.
BESIDE_OURS: tuple[Claim, ...] = (
    BASELINE_ERROR,
    *(_BY_KEY[key] for key in ("fig2b-ri", "fig4a-di-icr", "s2-di-pcr", "s1a-ri", "s1b-ri-icr")),
)
