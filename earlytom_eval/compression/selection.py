"""The visual tokens a method hands to the LLM for one video, and where each came from.

Pure data: every after-projector method (EarlyTom's stage 2, VisionZip, HoliTom, FastVID, DyCoke's
first stage, ToMe's pooling) returns a :class:`TokenSelection`, so the model integration splices any
method's tokens into the prompt the same way and ``--save-tokens`` can write where each token came from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["MERGED", "TokenSelection", "frame_major_index"]

#: ``source`` value of a token that is not one pooled token as it was (merged, contextual, mixed frames).
MERGED = -1


def frame_major_index(frames: torch.Tensor, tokens: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
    """``frame * S + token``: the frame-major index of pooled token ``token`` of frame ``frame``."""
    return frames * tokens_per_frame + tokens


@dataclass(frozen=True)
class TokenSelection:
    """One video's visual tokens after a method's selection, before the ``image_newline`` is appended.

    Attributes:
        tokens: ``[N, D]`` the tokens, in the order they enter the LLM.
        source: ``[N]`` long; for a token that is one pooled source token unchanged, its frame-major index
            ``t * S + q`` over the T0 input frames; :data:`MERGED` (-1) for merged or contextual tokens.
        positions: ``[N]`` long or None. None: the tokens take contiguous positions in the prompt (most
            methods). Otherwise each token's offset inside the uncompressed video span (``t * S + q``), for
            methods that keep original RoPE positions (FastVID); the newline then sits at ``T0 * S``.
    """

    tokens: torch.Tensor
    source: torch.Tensor
    positions: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = self.tokens.shape[0]
        if self.tokens.dim() != 2:
            raise ValueError(f"tokens must be [N, D], got {tuple(self.tokens.shape)}")
        if self.source.shape != (n,):
            raise ValueError(f"source must be [N] = [{n}], got {tuple(self.source.shape)}")
        if self.positions is not None and self.positions.shape != (n,):
            raise ValueError(f"positions must be [N] = [{n}], got {tuple(self.positions.shape)}")

    @property
    def count(self) -> int:
        return int(self.tokens.shape[0])
