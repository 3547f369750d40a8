"""The clip a measurement runs on: a video file, or a generated one with a known shot structure."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..video import VideoFrames, load_video, synthetic_frames, write_video

__all__ = ["ClipSpec", "load_clip", "parse_shots"]


@dataclass(frozen=True)
class ClipSpec:
    """Where a measured clip comes from: ``video`` (a file), or ``synthetic`` shots (``static:24,motion:16``)
    generated at ``size`` (``HxW``), ``seed`` and ``fps``, written to H.264 and read back like a file."""

    video: Path | None = None
    synthetic: str | None = None
    size: str = "240x320"
    seed: int = 0
    fps: float = 8.0

    def __post_init__(self) -> None:
        if (self.video is None) == (self.synthetic is None):
            raise ValueError("a clip is either a video file or synthetic shots")

    @property
    def name(self) -> str:
        """How outputs name the clip."""
        return self.video.name if self.video is not None else f"generated clip '{self.synthetic}'"


def parse_shots(spec: str) -> list[tuple[str, int]]:
    """``static:24,motion:16,static:24`` -> ``[("static", 24), ("motion", 16), ("static", 24)]``."""
    shots = []
    for item in spec.split(","):
        kind, _, count = item.strip().partition(":")
        if not kind or not count.isdigit():
            raise ValueError(f"bad --synthetic shot {item!r} (use KIND:FRAMES, e.g. static:24,motion:16)")
        shots.append((kind, int(count)))
    return shots


def load_clip(clip: ClipSpec, num_frames: int) -> tuple[VideoFrames, dict[str, Any]]:
    """Decode ``num_frames`` frames of the clip; returns them and what the report says about the clip."""
    if clip.video is not None:
        video = load_video(clip.video, num_frames)
        info: dict[str, Any] = {"path": str(clip.video)}
    else:
        height, width = (int(x) for x in clip.size.lower().split("x"))
        frames = synthetic_frames(parse_shots(clip.synthetic), size=(height, width), seed=clip.seed)
        with tempfile.TemporaryDirectory() as tmp:
            path = write_video(Path(tmp) / "synthetic.mp4", frames, fps=clip.fps)
            video = load_video(path, num_frames)
        info = {
            "synthetic": clip.synthetic,
            "size": [height, width],
            "seed": clip.seed,
            "fps": clip.fps,
            "how": "earlytom_eval.video.synthetic_frames -> write_video (H.264) -> load_video",
        }
    info.update(
        {"frames": len(video), "indices": list(video.indices), "total_frames": video.total_frames,
         "frame_shape": list(video.frames.shape[1:])}
    )
    return video, info
