"""ZeroDiff's ablation variants: ``base`` (ZeroDiff), ``diffgen`` and ``difftta`` (each ZeroDiff++
addition alone, our reading), ``full`` (ZeroDiff++: both; the headline)."""

BASE, DIFFGEN, DIFFTTA, FULL = "base", "diffgen", "difftta", "full"
VARIANTS = (BASE, DIFFGEN, DIFFTTA, FULL)
