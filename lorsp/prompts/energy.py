"""Energy of generating a prompt, from counted operations (docs/methods.md, "Energy").

Why counted and not measured: the point is to compare a spike-driven prompt with dense ones on the
hardware the spiking literature has in mind (event-driven accumulators), which no GPU here is.
The standard estimate in SNN papers prices a 32-bit floating-point multiply-accumulate (MAC,
dense arithmetic on real values) at 4.6 pJ and an accumulate (AC, an addition, which is all a
binary spike needs) at 0.9 pJ, the 45 nm figures of Horowitz, "Computing's energy problem (and
what we can do about it)", ISSCC 2014. Each prompter counts its own operations
(:meth:`lorsp.prompts.Prompter.energy_ops`), so the formula lives beside the method it describes.
"""

from __future__ import annotations

from typing import NamedTuple

#: Energy of one 32-bit floating-point multiply-accumulate, in pJ (Horowitz, ISSCC 2014, 45 nm).
PJ_PER_MAC = 4.6
#: Energy of one 32-bit floating-point addition (accumulate), in pJ (same source).
PJ_PER_AC = 0.9


class EnergyOps(NamedTuple):
    """Operations per image: dense multiply-accumulates and spike-driven (or plain) accumulates."""

    macs: float
    acs: float

    def nanojoules(self) -> float:
        """The estimated energy per image in nJ: (4.6 · MACs + 0.9 · ACs) pJ / 1000."""
        return (PJ_PER_MAC * self.macs + PJ_PER_AC * self.acs) / 1000.0


def static_prompt_ops(entries: int) -> EnergyOps:
    """A prompt that does not depend on the image is computed once and stored; per image it costs
    one addition into the image for each entry it stores (no multiplications at all)."""
    return EnergyOps(macs=0.0, acs=float(entries))
