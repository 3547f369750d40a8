"""Frame schedules: how many frames each vision-encoder layer processed, which sets the encoder's FLOPs.

A schedule comes from a run that happened (:func:`schedule_from_encoding`), is given on the command line
(:func:`parse_frames_per_layer`), or is one of the two bounds any clip lies between (:func:`no_merge_schedule`,
:func:`max_merge_schedule`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..compression.config import CompressionConfig, ModelFacts
from ..compression.registry import build_method
from ..compression.temporal import Segment

__all__ = [
    "FrameSchedule",
    "max_merge_schedule",
    "no_merge_schedule",
    "parse_frames_per_layer",
    "run_length",
    "planned_schedule",
    "schedule_from_encoding",
    "schedules_for",
]


def run_length(values: Sequence[int]) -> str:
    """Run-length form of per-layer counts, e.g. ``32x11 20x11 12x2 8x2``."""
    runs: list[list[int]] = []
    for value in values:
        if runs and runs[-1][0] == value:
            runs[-1][1] += 1
        else:
            runs.append([value, 1])
    return " ".join(f"{v}x{n}" for v, n in runs)


@dataclass(frozen=True)
class FrameSchedule:
    """Frames (and tokens per frame) each encoder layer processed, what leaves the encoder, the final segments.

    ``segments`` (post-merge frame indices) decide which frames are static in the spatial selection;
    None when unknown (the token count then takes every frame as dynamic). ``tokens_per_layer``: tokens per
    frame entering each layer, None when every layer sees all patches; ``tokens_out``: tokens per frame
    leaving the encoder (None: the last layer's input count, or what the method's schedule says).
    """

    frames_per_layer: tuple[int, ...]
    frames_out: int
    segments: tuple[Segment, ...] | None = None
    source: str = ""
    tokens_per_layer: tuple[int, ...] | None = None
    tokens_out: int | None = None

    @property
    def frames_in(self) -> int:
        return self.frames_per_layer[0]

    def compact(self) -> str:
        """Run-length form, e.g. ``32x11 20x11 12x2 8x2``."""
        return run_length(self.frames_per_layer)

    def tokens_compact(self) -> str:
        """Tokens per frame per layer in run-length form (empty when every layer sees all patches)."""
        if self.tokens_per_layer is None:
            return ""
        runs: list[list[int]] = []
        for value in self.tokens_per_layer:
            if runs and runs[-1][0] == value:
                runs[-1][1] += 1
            else:
                runs.append([value, 1])
        return " ".join(f"{v}x{n}" if n > 1 else str(v) for v, n in runs)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "source": self.source,
            "frames_per_layer": list(self.frames_per_layer),
            "frames_out": self.frames_out,
            "segments": [list(s) for s in self.segments] if self.segments is not None else None,
        }
        if self.tokens_per_layer is not None:
            out["tokens_per_layer"] = list(self.tokens_per_layer)
            out["tokens_out"] = self.tokens_out
        return out


def schedule_from_encoding(
    encoding: Any, source: str = "measured", full_tokens: int | None = None
) -> FrameSchedule:
    """From a :class:`~earlytom_eval.models.llava_ov.VideoEncoding` (what actually ran).

    Its ``tokens_per_layer`` are kept when some layer saw fewer than ``full_tokens`` (or, without it, when
    they vary)."""
    tokens = tuple(getattr(encoding, "tokens_per_layer", ()) or ())
    shrinks = bool(tokens) and (min(tokens) < full_tokens if full_tokens else len(set(tokens)) > 1)
    return FrameSchedule(
        frames_per_layer=tuple(encoding.frames_per_layer),
        frames_out=encoding.frames_out,
        segments=tuple(tuple(s) for s in encoding.segments) if encoding.segments is not None else None,
        source=source,
        tokens_per_layer=tokens if shrinks else None,
    )


def planned_schedule(planned: Any, frames: int, layers: int, tokens_out: int | None = None) -> FrameSchedule:
    """A method's :class:`~earlytom_eval.compression.methods.PlannedCounts` as a schedule (every frame through
    every layer unless it says otherwise). A ``tokens_per_layer`` with one entry more than the layers gives
    the tokens leaving the encoder as its last entry."""
    fpl = tuple(planned.frames_per_layer) if planned.frames_per_layer is not None else (frames,) * layers
    tokens = tuple(planned.tokens_per_layer) if planned.tokens_per_layer is not None else None
    if tokens is not None and len(tokens) == layers + 1:
        tokens, tokens_out = tokens[:layers], tokens[layers]
    kind = "exact" if planned.exact else "upper bound (data-dependent)"
    return FrameSchedule(fpl, fpl[-1], None, source=f"planned by the method: {kind}", tokens_per_layer=tokens,
                         tokens_out=tokens_out)


def no_merge_schedule(config: CompressionConfig, frames: int, layers: int) -> FrameSchedule:
    """Upper bound for any clip: no frame merges (every frame its own segment, all frames dynamic)."""
    segments = tuple((i, i) for i in range(frames)) if config.compresses else None
    return FrameSchedule((frames,) * layers, frames, segments, source="bound: no frame merged (upper bound)")


def _window_segments(frames: int, window: int) -> list[Segment]:
    return [(s, min(s + window, frames) - 1) for s in range(0, frames, window)]


def _max_merge_out(length: int) -> int:
    """Fewest frames a coarse segment of ``length`` frames can leave: ends kept, middle pairs merged.

    With L middle frames every pair can merge (L // 2 outputs); an odd last middle frame is dropped by the
    reference's loop (its quirk), so 5 -> 3, 4 -> 3, 3 -> 3.
    """
    if length <= 2:
        return length
    return 2 + max(1, (length - 2) // 2)


def max_merge_schedule(config: CompressionConfig, frames: int, layers: int) -> FrameSchedule:
    """Lower bound for any clip: the most merging the algorithm allows.

    The coarse segmentation cuts a segment at ``max_window - 1`` frames at the latest; with every
    similarity above the thresholds each segment keeps only ``_max_merge_out`` frames. The final
    re-segmentation then also tiles the merged frames by that window.
    """
    if not config.compresses:
        return FrameSchedule((frames,) * layers, frames, None, source="full")
    window = config.max_window - 1
    counts = []
    current = frames
    out_after: dict[int, int] = {}
    for layer in config.prune_layers:
        current = sum(_max_merge_out(e - s + 1) for s, e in _window_segments(current, window))
        out_after[layer] = current
    current = frames
    for layer in range(layers):
        counts.append(current)
        if layer in out_after:
            current = out_after[layer]
    segments = tuple(_window_segments(current, window))
    return FrameSchedule(
        tuple(counts), current, segments, source=f"bound: most merging window {config.max_window} allows (lower bound)"
    )


def parse_frames_per_layer(
    text: str, config: CompressionConfig, frames: int, layers: int
) -> FrameSchedule:
    """An explicit schedule: one count per encoder layer (``32x11,20x11,12x2,8x2`` run-length allowed),
    or one count per prune layer of the config (frames left after each, e.g. ``20,12,8``)."""
    values: list[int] = []
    for item in text.replace(";", ",").replace(" ", ",").split(","):
        item = item.strip()
        if not item:
            continue
        count, _, repeat = item.partition("x")
        try:
            values.extend([int(count)] * (int(repeat) if repeat else 1))
        except ValueError:
            raise ValueError(f"bad --frames-per-layer item {item!r} (use counts like 32x11,20x11 or 20,12,8)") from None
    if not values or any(v < 1 for v in values):
        raise ValueError(f"--frames-per-layer needs positive frame counts, got {text!r}")
    if len(values) == layers:
        per_layer = values
        frames_out = per_layer[-1]
    elif config.prune_layers and len(values) == len(config.prune_layers):
        per_layer, current = [], frames
        after = dict(zip(config.prune_layers, values))
        for layer in range(layers):
            per_layer.append(current)
            current = after.get(layer, current)
        frames_out = current
    else:
        raise ValueError(
            f"--frames-per-layer for '{config.name}' needs {layers} per-layer counts or "
            f"{len(config.prune_layers)} counts (frames after each prune layer), got {len(values)}"
        )
    if per_layer[0] != frames:
        raise ValueError(f"--frames-per-layer starts at {per_layer[0]} frames but the clip has {frames}")
    if any(b > a for a, b in zip(per_layer, per_layer[1:])) or frames_out > per_layer[-1]:
        raise ValueError(f"--frames-per-layer must never increase: {per_layer}")
    return FrameSchedule(tuple(per_layer), frames_out, None, source=f"given: {text}")


def schedules_for(
    configs: Sequence[CompressionConfig],
    layers: int,
    given: Mapping[str | None, str] | None = None,
    measured: Mapping[str, tuple[FrameSchedule, int]] | None = None,
    facts: ModelFacts | None = None,
) -> dict[str, list[tuple[str, FrameSchedule, int | None]]]:
    """Per config name, the schedules to count: ``(label suffix, schedule, visual tokens or None)``.

    ``full`` runs every frame through every one of the ``layers`` encoder layers. A config takes, in order, its
    ``measured`` schedule and token count (a run on a clip), or else what its method plans
    (:meth:`~earlytom_eval.compression.methods.CompressionMethod.planned_counts`, with ``facts``): exact
    counts (no suffix) or, where the count depends on the data, the method's upper bound (suffix
    ``@upper-bound``). A method that plans nothing (EarlyTom: frame merging depends on the clip) takes its
    own ``given`` counts (key: its name; key None: every such config), or else both bounds of its frame
    schedule (suffixes ``@no-merge`` and ``@max-merge``).
    """
    given = given or {}
    measured = measured or {}
    out = {}
    for cfg in configs:
        frames = cfg.num_frames
        planned = build_method(cfg).planned_counts(facts, frames) if facts is not None else None
        if cfg.name in measured:
            schedule, visual = measured[cfg.name]
            out[cfg.name] = [("", schedule, visual)]
        elif not cfg.compresses and planned is None:
            out[cfg.name] = [("", FrameSchedule((frames,) * layers, frames, None, "full"), None)]
        elif planned is not None:
            suffix = "" if planned.exact or not cfg.compresses else "@upper-bound"
            out[cfg.name] = [(suffix, planned_schedule(planned, frames, layers), planned.visual_tokens)]
        elif cfg.name in given or None in given:
            text = given.get(cfg.name, given.get(None))
            out[cfg.name] = [("", parse_frames_per_layer(text, cfg, frames, layers), None)]
        else:
            out[cfg.name] = [
                ("@no-merge", no_merge_schedule(cfg, frames, layers), None),
                ("@max-merge", max_merge_schedule(cfg, frames, layers), None),
            ]
    return out
