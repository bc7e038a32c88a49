"""How a loader rebalances attributes: the per-sample weights the dataset card shows and the loader draws with."""

from __future__ import annotations


def rebalance_weights(counts: dict[str, int]) -> dict[str, float]:
    """Per-sample weight for each attribute so that weighted sampling draws every attribute equally often.

    w_a = N / (K * n_a): each attribute's total weight n_a * w_a is N / K, and the mean weight per sample is 1.
    """
    present = {name: n for name, n in counts.items() if n > 0}
    total = sum(present.values())
    return {name: total / (len(present) * n) for name, n in present.items()}
