"""Independent random streams derived from one seed.

Each use of randomness (the test split, the validation split, the training cap, the synthetic
images, the epoch order, the augmentation draws) gets its own generator seeded by
``mix(seed, STREAM, ...)``. Separate streams are what make the protocol hold: changing
``val_fraction`` or ``max_train`` draws from other streams than the test split, so the test images
cannot move, and a new training seed reorders batches without touching the splits.
"""

from __future__ import annotations

__all__ = [
    "STREAM_AUG",
    "STREAM_CAP",
    "STREAM_ORDER",
    "STREAM_SYNTH",
    "STREAM_TEST",
    "STREAM_VAL",
    "mix",
]

STREAM_TEST, STREAM_VAL, STREAM_CAP, STREAM_SYNTH, STREAM_ORDER, STREAM_AUG = range(1, 7)


def mix(*parts: int) -> int:
    """Combine integers into one generator seed; distinct streams must not collide."""
    h = 0x243F6A8885A308D3
    for p in parts:
        h = (h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0x100000001B3 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 29
    return h & 0x7FFFFFFFFFFFFFFF
