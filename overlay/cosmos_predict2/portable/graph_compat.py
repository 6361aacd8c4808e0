"""Stand-ins for the three TransformerEngine names that imaginaire/utils/graph.py imports.

Without TransformerEngine there are no TE modules to special-case and no TE-tracked RNG states, so a CUDA graph
captures plain torch modules and the default generator only.
"""

from __future__ import annotations


class TransformerEngineBaseModule:  # never instantiated: isinstance() checks are simply False
    pass


def graph_safe_rng_available() -> bool:
    return False


def get_all_rng_states() -> dict:
    return {}
