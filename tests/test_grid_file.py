"""A user's own grid file (sweeps/grid_file.py): trials, dry runs, refusals and --resume.

Refusals run the launcher's main() in this process (quick); the documented example runs as
`python sweeps/launch.py` in a subprocess, as a user runs it.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from helpers import REPO, explain, launch

from sweeps.cli import main
from sweeps.grid_file import RECORD_FILE, check_record, load_grid_file, recorded
from sweeps.grids import VARIANTS
from sweeps.preflight import UsageError

EXAMPLE = REPO / "docs" / "examples" / "coupling-fine.yaml"
SMALL = """\
name: tiny-grid
description: two couplings x two widths
base: {data.dataset: mnist, optim.epochs: 2}
axes:
  coupling.lam: [0.0, 0.5]
  model.width: [8, 16]
seeds: 2
trials:
  - {model.arch: torchvision-resnet18}
"""


def grid_file(tmp_path: Path, text: str, name: str = "grid.yaml") -> Path:
    """Write a grid file into tmp_path and return its path."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def refused(capsys: pytest.CaptureFixture, storage: Path, *args: str) -> str:
    """Run the launcher; check exit 2, one line of error, nothing under storage; return it."""
    with pytest.raises(SystemExit) as exited:
        main([*args, f"--storage={storage}"])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert error.count("error:") == 1 and error.count("\n") == 1, error
    assert not storage.exists()
    return error


def test_trials_are_the_product_then_the_extra_trials_each_with_every_seed(
    tmp_path: Path,
) -> None:
    grid = load_grid_file(str(grid_file(tmp_path, SMALL)))
    assert grid.name == "tiny-grid" and grid.seeds == 2
    trials = grid.trials()
    assert len(trials) == (2 * 2 + 1) * 2
    assert trials[:3] == [
        {"data.dataset": "mnist", "optim.epochs": 2, "coupling.lam": 0.0, "model.width": 8,
         "run.seed": 0},
        {"data.dataset": "mnist", "optim.epochs": 2, "coupling.lam": 0.0, "model.width": 8,
         "run.seed": 1},
        {"data.dataset": "mnist", "optim.epochs": 2, "coupling.lam": 0.0, "model.width": 16,
         "run.seed": 0},
    ]  # fmt: skip
    assert trials[-1] == {
        "data.dataset": "mnist",
        "optim.epochs": 2,
        "model.arch": "torchvision-resnet18",
        "run.seed": 1,
    }
    assert len(grid.trials(seeds=1)) == 5


def test_paper_variants_cross_the_axes(tmp_path: Path) -> None:
    path = grid_file(tmp_path, "name: v\nvariants: paper\naxes: {model.width: [8, 16]}\n")
    trials = load_grid_file(str(path)).trials(seeds=1)
    assert len(trials) == len(VARIANTS) * 2
    assert [{k: t[k] for k in VARIANTS[0]} for t in trials[::2]] == list(VARIANTS)


def test_dry_run_counts_the_trials_with_seeds_and_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = str(grid_file(tmp_path, SMALL))
    storage = tmp_path / "results"
    assert main(["--grid-file", path, "--dry-run", f"--storage={storage}"]) == 0
    out = capsys.readouterr().out
    assert f"{path}: two couplings x two widths" in out
    assert "grid tiny-grid: 10 trials" in out
    assert main(["--grid-file", path, "optim.epochs=1", "--seeds=3", "--dry-run"]) == 0
    assert "grid tiny-grid: 15 trials" in capsys.readouterr().out
    assert main(["--grid-file", path, "--limit=4", "--dry-run"]) == 0
    assert "grid tiny-grid: 4 trials" in capsys.readouterr().out
    assert not storage.exists()


def test_the_documented_example_passes_a_dry_run(tmp_path: Path) -> None:
    storage = tmp_path / "results"
    result = launch("--grid-file", str(EXAMPLE), "--dry-run", f"--storage={storage}")
    assert result.returncode == 0, explain(result)
    assert "grid coupling-fine: 57 trials" in result.stdout  # (9 x 2 + 1) x 3 seeds
    assert not storage.exists()


def test_a_refusal_from_the_command_line(tmp_path: Path) -> None:
    path = grid_file(tmp_path, SMALL.replace("[0.0, 0.5]", "[0.0, 1.5]"))
    storage = tmp_path / "results"
    result = launch("--grid-file", str(path), "--dry-run", f"--storage={storage}")
    assert result.returncode == 2, explain(result)
    assert result.stderr.strip().splitlines() == [
        f"sweeps/launch.py: error: {path}: coupling.lam=1.5: must be in [0, 1]"
    ]
    assert not storage.exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("axes: [1, 2\n", "not valid YAML at line 2, column 1: expected ',' or ']'"),
        ("- name: x\n", "must be a YAML mapping of name, description, base, axes, variants"),
        ("name: x\naxis: {model.width: [8]}\n", "unknown field 'axis': allowed are name, "),
        ("axes: {model.width: [8]}\n", "name is missing: the grid's name"),
        ("name: Coupling Fine\naxes: {model.width: [8]}\n", "name='Coupling Fine': allowed are"),
        ("name: smoke\naxes: {model.width: [8]}\n", "name='smoke': a built-in grid's name"),
        ("name: x\nseeds: 0\naxes: {model.width: [8]}\n", "seeds=0: must be an integer >= 1"),
        ("name: x\nvariants: all\n", "variants='all': allowed are 'paper'"),
        ("name: x\nbase: {model: {width: 8}}\naxes: {coupling.lam: [0.5]}\n",
         "base: key 'model' is not a flat config key: write section.field"),
        ("name: x\naxes: {run.seed: [0, 1]}\n", "axes: run.seed: set by seeds (and --seeds)"),
        ("name: x\nbase: {data.root: /data}\naxes: {model.width: [8]}\n",
         "base: data.root: set by --data-root"),
        ("name: x\naxes: {model.width: 8}\n", "axes: model.width=8: must be a non-empty list"),
        ("name: x\naxes: {model.width: []}\n", "axes: model.width=[]: must be a non-empty list"),
        ("name: x\nbase: {model.width: 8}\naxes: {model.width: [8, 16]}\n",
         "model.width is in base and in axes"),
        ("name: x\nvariants: paper\naxes: {coupling.lam: [0.25]}\n",
         "coupling.lam: set by variants (with coupling.lam, model.recurrent_init)"),
        ("name: x\ntrials: {model.width: 8}\n", "trials={'model.width': 8}: must be a list"),
        ("name: x\nbase: {data.dataset: mnist}\n", "no trials: give axes, variants, trials"),
        ("name: x\naxes: {model.widht: [8]}\n", "unknown config key 'model.widht'"),
        ("name: x\naxes: {coupling.lam: [0.5, 1.5]}\n", "coupling.lam=1.5: must be in [0, 1]"),
        ("name: x\naxes: {data.dataset: [cifar11]}\n", "data.dataset='cifar11': allowed are"),
        ("name: x\naxes: {model.width: [8, 8]}\n", "trials 0 and 1 are the same trial"),
        ("name: x\naxes: {model.width: [8]}\ntrials: [{model.width: 8}]\n",
         "trials 0 and 1 are the same trial"),
        ("name: !!python/object/apply:os.system [echo ran]\naxes: {model.width: [8]}\n",
         "refused at line 1, column 7: could not determine a constructor for the tag"),
        ("name: x\naxes:\n  model.width: [8]\n  model.width: [16]\n",
         "refused at line 4, column 3: key 'model.width' is given twice"),
        ("name: x\naxes: {model.arch: [torchvision-resnet18], model.width: [8]}\n",
         "model.width=8: does not apply to model.arch='torchvision-resnet18'"),
    ],
)  # fmt: skip
def test_a_bad_file_is_refused_in_one_line_naming_the_value(
    tmp_path: Path, capsys: pytest.CaptureFixture, text: str, message: str
) -> None:
    path = grid_file(tmp_path, text)
    error = refused(capsys, tmp_path / "results", "--grid-file", str(path))
    assert f"error: {path}: " in error or f"error: --grid-file {path}: " in error
    assert message in error


def test_a_missing_or_unreadable_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    storage = tmp_path / "results"
    missing = tmp_path / "absent.yaml"
    assert f"--grid-file {missing}: no such file" in refused(
        capsys, storage, "--grid-file", str(missing)
    )
    assert f"--grid-file {tmp_path}: cannot read it" in refused(
        capsys, storage, "--grid-file", str(tmp_path)
    )
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00name")
    assert "cannot read it (UnicodeDecodeError)" in refused(
        capsys, storage, "--grid-file", str(binary)
    )


def test_grid_and_grid_file_exactly_one(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = str(grid_file(tmp_path, SMALL))
    storage = tmp_path / "results"
    error = refused(capsys, storage, "smoke", "--grid-file", path)
    assert f"GRID 'smoke' and --grid-file {path}: give one of them" in error
    error = refused(capsys, storage, "optim.epochs=2")
    assert "no grid: give GRID (one of paper_grid, " in error and "or --grid-file FILE" in error


def test_an_override_that_makes_two_trials_identical(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = str(grid_file(tmp_path, SMALL))
    error = refused(capsys, tmp_path / "results", "--grid-file", path, "coupling.lam=0.5")
    assert "are identical" in error and "an override sets a key the grid varies" in error
    error = refused(capsys, tmp_path / "results", "--grid-file", path, "model.widht=8")
    assert "unknown config key 'model.widht'" in error and str(path) not in error


def fake_sweep(storage: Path, name: str) -> Path:
    """Return STORAGE/NAME holding what Tune.can_restore looks for (never unpickled here)."""
    path = storage / name
    path.mkdir(parents=True)
    (path / "tuner.pkl").write_bytes(b"")
    return path


def test_resume_refuses_a_changed_file_or_a_sweep_without_a_record(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = grid_file(tmp_path, SMALL)
    storage = tmp_path / "results"
    sweep = fake_sweep(storage, "tiny-grid")
    before = set(storage.rglob("*"))
    with pytest.raises(SystemExit) as exited:
        main(["--grid-file", str(path), "--resume", f"--storage={storage}"])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert f"the sweep at {sweep} has no record of a grid file ({RECORD_FILE})" in error
    grid = load_grid_file(str(path))
    with recorded(grid, str(sweep), resume=False):
        check_record(grid, str(sweep))  # the same file: resumable
    assert json.loads((sweep / RECORD_FILE).read_text())["sha256"] == grid.digest()
    path.write_text(SMALL.replace("seeds: 2", "seeds: 3"))
    with pytest.raises(SystemExit):
        main(["--grid-file", str(path), "--resume", f"--storage={storage}"])
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert "the file's trials changed since the sweep at" in error
    assert "restore the file as it was, or start a new sweep in another --storage" in error
    assert set(storage.rglob("*")) == {*before, sweep / RECORD_FILE}  # only the record, above


def test_a_description_or_comment_change_keeps_a_sweep_resumable(tmp_path: Path) -> None:
    path = grid_file(tmp_path, SMALL)
    digest = load_grid_file(str(path)).digest()
    path.write_text("# a comment\n" + SMALL.replace("two couplings", "2 couplings"))
    assert load_grid_file(str(path)).digest() == digest


def test_a_sweep_refused_by_the_cluster_leaves_no_record(tmp_path: Path) -> None:
    grid = load_grid_file(str(grid_file(tmp_path, SMALL)))
    sweep = tmp_path / "results" / grid.name
    with pytest.raises(UsageError), recorded(grid, str(sweep), resume=False):
        assert (sweep / RECORD_FILE).exists()
        raise UsageError("run.device='cuda': the cluster has no GPUs")
    assert not sweep.exists()


def test_status_reads_the_sweep_of_the_file_s_name(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = grid_file(tmp_path, SMALL)
    storage = tmp_path / "results"
    sweep = fake_sweep(storage, "tiny-grid")
    (sweep / "experiment_state-x.json").write_text(json.dumps({"trial_data": [], "stats": {}}))
    assert main(["--grid-file", str(path), "--status", f"--storage={storage}"]) == 0
    out = capsys.readouterr().out
    assert f"sweep at {sweep}" in out and "0 total" in out
