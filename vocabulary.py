"""The paper's words, defined once: datasets, widths, couplings, blocks, variants, curves, indices.

Torch-free and at the bottom of the project, so models/, pipeline/, sweeps/ and analysis/ all
import their names and labels from here and never spell them again.
"""

from __future__ import annotations

# Datasets (docs/data.md). Digitclutter-n images hold n distinct digits.
DIGITCLUTTER_DIGITS = (3, 4, 5)
DIGITCLUTTER = tuple(f"digitclutter-{n}" for n in DIGITCLUTTER_DIGITS)
# The paper's six datasets: its grids, figures and claims are about these.
PAPER_DATASETS = ("cifar10", "cifar100", "mnist", *DIGITCLUTTER)
# Beyond the paper, the task its Discussion names for the next experiment (docs/method.md):
# Pathfinder-L, whose two target contours have L paddles (LRA's easy, intermediate, hard).
PATHFINDER_LENGTHS = (6, 9, 14)
PATHFINDER = tuple(f"pathfinder-{n}" for n in PATHFINDER_LENGTHS)
DATASETS = (*PAPER_DATASETS, *PATHFINDER)
# The order of the paper's panels: its main datasets first; Pathfinder after, easy to hard.
DATASET_ORDER = (
    "cifar10",
    "digitclutter-5",
    "digitclutter-4",
    "digitclutter-3",
    "cifar100",
    "mnist",
    *PATHFINDER,
)
DATASET_LABELS = {
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "mnist": "MNIST",
    **{
        name: f"Digitclutter-{n}" for name, n in zip(DIGITCLUTTER, DIGITCLUTTER_DIGITS, strict=True)
    },
    **{name: f"Pathfinder-{n}" for name, n in zip(PATHFINDER, PATHFINDER_LENGTHS, strict=True)},
}
# MNIST, Digitclutter and Pathfinder are grey; CIFAR is RGB.
INPUT_CHANNELS = {name: 3 if name.startswith("cifar") else 1 for name in DATASETS}
# Training images of the torchvision datasets (a generated set's size is a config value).
TRAIN_IMAGES = {"cifar10": 50_000, "cifar100": 50_000, "mnist": 60_000}
# Paper-scale Digitclutter sets: the defaults of data.clutter_train_images / _test_images.
CLUTTER_IMAGES = {"train": 100_000, "test": 10_000}
# Pathfinder sets per difficulty, the defaults of data.pathfinder_train_images / _test_images:
# as many as Digitclutter's, so trials on either family see as many images per epoch (half of
# LRA's 200,000 keeps the one-off generation under an hour on one core, docs/data.md).
PATHFINDER_IMAGES = dict(CLUTTER_IMAGES)
# px, every dataset's input height = width (MNIST padded, Digitclutter block-averaged)
IMAGE_SIZE = 32

# The network (docs/method.md).
WIDTHS = (8, 16, 32, 64)  # channels of stage 1 in the paper's grid
BLOCK_TYPES = ("ordinary", "icr", "pcr")  # z + f(z), z + f~(z), x + f~(z)
CONVERGENT_BLOCKS = ("icr", "pcr")  # spectrally normalised: improperly / properly convergent
CONVERGENT_MU = 0.95  # the Lipschitz cap μ of f~ for ICR and PCR blocks, in (0, 1]
BLOCK_LABELS = {"ordinary": "ordinary", "icr": "ICR", "pcr": "PCR"}
# model.arch: the project's pre-activation ResNet, or a torchvision ResNet (docs/measure.md).
PREACT = "preact"
TORCHVISION_RESNETS = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "wide_resnet50_2",
)
TORCHVISION_PREFIX = "torchvision-"
ARCHS = (PREACT, *(TORCHVISION_PREFIX + name for name in TORCHVISION_RESNETS))

# Soft gradient coupling (docs/method.md).
COUPLINGS = (0.0, 0.5, 0.9, 1.0)  # lambda of the recurrently initialised variants
KERNELS = ("uniform", "triangular")

# Where a trial runs.
DEVICES = ("auto", "cpu", "cuda")

# Perturbation curves and iteration indices (docs/method.md).
CURVES = ("readout", "dropout", "extra")
CURVE_COLUMNS = ("stage", "curve", "step", "error")
INDEX_NAMES = ("ci", "ri", "di")
INDEX_LABELS = {"ci": "Convergence Index", "ri": "Recurrence Index", "di": "Divergence Index"}

# Conditions of a run, in the paper's words (Fig 3: "rec.: recurrent; non-rec.: non-recurrent").
NONREC = "non-rec."
REC = "rec."
STANDARD = "standard"  # the training variation of a run with none of S4's changes
FULL = "full"  # the training size of a run on the whole training split


def variant_label(recurrent_init: bool, coupling: float) -> str:
    """Return the initialisation and coupling: "non-rec.", "rec. 0.9" or "non-rec. 0.5"."""
    if recurrent_init:
        return f"{REC} {coupling:g}"
    return NONREC if coupling == 0 else f"{NONREC} {coupling:g}"


def variant_slug(recurrent_init: bool, coupling: float) -> str:
    """Return the variant label without spaces and dots, for names: "nonrec", "rec0.9"."""
    label = variant_label(recurrent_init, coupling)
    return label.replace(NONREC, "nonrec").replace(REC, "rec").replace(" ", "")


def variant_order(label: str) -> tuple[int, float]:
    """Return the sort key of a variant label: non-recurrent first, then by coupling."""
    recurrent = label.startswith(REC)
    rest = label.removeprefix(REC).removeprefix(NONREC).strip()
    return (int(recurrent), float(rest) if rest else 0.0)


# The five initialisation/coupling variants of the paper's design, in its order.
PAPER_VARIANTS = (variant_label(False, 0.0), *(variant_label(True, lam) for lam in COUPLINGS))


def variation_label(bn_gamma_init: float, kernel: str, first_coupled: int) -> str:
    """Return the training variation (paper S4): standard, BN γ 0.1, triangular kernel, ..."""
    parts = []
    if bn_gamma_init != 1.0:
        parts.append(f"BN γ {bn_gamma_init:g}")
    if kernel != "uniform":
        parts.append(f"{kernel} kernel")
    if first_coupled > 0:
        parts.append(f"first {first_coupled} uncoupled")
    return ", ".join(parts) or STANDARD


def dataset_label(name: str) -> str:
    """Return the paper's spelling of a dataset name (CIFAR-10, Digitclutter-5, ...)."""
    return DATASET_LABELS.get(name, name)


def matches_level(value: object, level: object) -> bool:
    """Return True if `value` is at the condition's level: that one value, or in a tuple of them."""
    return value in level if isinstance(level, tuple) else value == level
