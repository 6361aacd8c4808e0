"""The `transformer_engine` names upstream's DiT uses, for a one-line import swap.

`import transformer_engine as te` becomes `from cosmos_predict2.portable import te_compat as te`, after which
`te.pytorch.RMSNorm(dim, eps=1e-6)` builds the portable RMSNorm (see rmsnorm.py).
"""

from __future__ import annotations

from types import SimpleNamespace

from .attention import DotProductAttention
from .rmsnorm import RMSNorm
from .rope import apply_rotary_pos_emb

pytorch = SimpleNamespace(
    RMSNorm=RMSNorm,
    DotProductAttention=DotProductAttention,
    apply_rotary_pos_emb=apply_rotary_pos_emb,
    attention=SimpleNamespace(DotProductAttention=DotProductAttention, apply_rotary_pos_emb=apply_rotary_pos_emb),
)

__all__ = ["pytorch"]
