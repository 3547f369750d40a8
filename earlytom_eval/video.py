"""Video loading (decord / PyAV / OpenCV) and deterministic synthetic test clips.

``load_video`` samples frames uniformly over the whole clip as the LLaVA-OneVision reference does; the
decoders are imported lazily (each such import is marked), so importing this module needs none of them and a
missing one falls back on the next (decord -> PyAV -> OpenCV). ``synthetic_frames`` / ``write_video`` build
clips with a known temporal structure for tests.
"""

from __future__ import annotations

import logging
import os
import pathlib
import re
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "BACKENDS",
    "VideoFrames",
    "VideoLoadError",
    "frame_indices",
    "load_video",
    "synthetic_frames",
    "write_video",
]

BACKENDS = ("auto", "decord", "pyav", "cv2")
SHOT_KINDS = ("static", "motion")


class VideoLoadError(ValueError):
    """A video file that is missing, empty, not decodable, or has no frames.

    ``str(err)`` is a single line naming the file and what is wrong, e.g.
    ``cannot read video 'x.mp4': file not found``.
    """

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = _one_line(reason)
        super().__init__(f"cannot read video {self.path!r}: {self.reason}")


@dataclass(frozen=True, eq=False)
class VideoFrames:
    """Frames decoded from one video.

    frames: uint8 RGB array ``[T, H, W, 3]``.
    indices: source frame index of each returned frame (length T).
    total_frames: number of frames in the source video.
    fps: average frame rate of the source video (0.0 if unknown).
    backend: decoder that produced the frames ("decord", "pyav" or "cv2").
    path: the file that was read.
    """

    frames: np.ndarray
    indices: list[int]
    total_frames: int
    fps: float
    backend: str
    path: str

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    @property
    def duration(self) -> float:
        """Clip length in seconds (0.0 when the frame rate is unknown)."""
        return self.total_frames / self.fps if self.fps > 0 else 0.0


# --------------------------------------------------------------------------- #
# sampling
# --------------------------------------------------------------------------- #


def frame_indices(total_frames: int, num_frames: int) -> list[int]:
    """Uniformly spaced source indices, exactly as the reference pipeline.

    ``numpy.linspace(0, total_frames - 1, num_frames)`` truncated to int; the
    first and last frame are always included (for ``num_frames >= 2``), and
    indices repeat when the clip has fewer than ``num_frames`` frames.
    """
    total_frames = _as_int(total_frames, "total_frames")
    num_frames = _as_int(num_frames, "num_frames")
    if total_frames < 1:
        raise ValueError(f"total_frames must be >= 1, got {total_frames}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    return [int(i) for i in np.linspace(0, total_frames - 1, num_frames, dtype=int)]


def _as_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------- #
# loading
# --------------------------------------------------------------------------- #


def load_video(path, num_frames: int, backend: str = "auto") -> VideoFrames:
    """Decode ``num_frames`` uniformly sampled RGB frames from ``path``.

    backend:
      "auto"   - decord, falling back to PyAV when decord is not installed or
                 cannot open/read the file;
      "decord" - decord only;
      "pyav"   - PyAV only;
      "cv2"    - OpenCV only (the fallback of "auto" when neither decord
                 nor PyAV is installed).

    Raises VideoLoadError (one-line message naming the file) for a missing,
    empty, undecodable or zero-frame file; ValueError for a bad backend or
    num_frames; ImportError when a forced backend is not installed.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    num_frames = _as_int(num_frames, "num_frames")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")

    path_str = os.fspath(path)
    _check_file(path_str)

    if backend == "pyav":
        return _repeat_warning(_load_pyav(path_str, num_frames), num_frames)

    # decord is a native library with few guard rails; it has been known to
    # abort or crash the interpreter on some malformed inputs instead of
    # raising.  (With decord 0.6.0 here, garbage bytes, truncated mp4s,
    # audio-only and zero-frame files all raised cleanly, so this is purely
    # defensive.)  Every file is therefore probed with PyAV first (container
    # opens, has a video stream) and only files that pass are handed to
    # decord.  If PyAV is not installed the probe is skipped.
    _probe_container(path_str)

    if backend == "decord":
        return _repeat_warning(_load_decord(path_str, num_frames), num_frames)

    if backend == "cv2":
        return _repeat_warning(_load_cv2(path_str, num_frames), num_frames)

    # auto: any decord problem (not installed, cannot open/read, reports zero
    # frames) is handed to PyAV, which decodes and gives the final verdict;
    # without PyAV, OpenCV does (machines with neither decord nor PyAV).
    try:
        return _repeat_warning(_load_decord(path_str, num_frames), num_frames)
    except Exception as exc:
        logger.debug("decord failed on %r, falling back to PyAV", path_str, exc_info=True)
        decord_error = exc
    try:
        video = _load_pyav(path_str, num_frames)
    except ImportError:
        logger.debug("PyAV is not installed, falling back to OpenCV for %r", path_str)
        try:
            video = _load_cv2(path_str, num_frames)
        except ImportError:
            raise VideoLoadError(
                path_str, "no video decoder installed (install decord, av or opencv-python-headless)"
            ) from None
        _fallback_warning(path_str, decord_error, "OpenCV")
        return _repeat_warning(video, num_frames)
    _fallback_warning(path_str, decord_error)
    return _repeat_warning(video, num_frames)


#: What was already warned about in this process (warnings are once per file / once per run, not per video).
_WARNED: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        logger.warning(message)


def _fallback_warning(path: str, error: BaseException, backend: str = "PyAV") -> None:
    """The auto backend read ``path`` with ``backend`` after decord failed: one warning per file."""
    if isinstance(error, ImportError):
        _warn_once(f"decord-missing:{backend}",
                   f"decord is not installed: videos are read with {backend} (backend auto)")
        return
    reason = error.reason if isinstance(error, VideoLoadError) else _short_reason(error)
    _warn_once(f"fallback:{os.path.abspath(path)}",
               f"decord cannot read video {path!r} ({reason}); read it with {backend} instead (backend auto)")


def _repeat_warning(video: VideoFrames, num_frames: int) -> VideoFrames:
    """One warning per run when more frames are sampled than a clip has (uniform sampling repeats frames)."""
    if num_frames > video.total_frames:
        _warn_once(
            "repeated-frames",
            f"video {video.path!r} has {video.total_frames} frames but {num_frames} are sampled: frames are "
            "repeated (uniform sampling, as lmms-eval's own models do); lower max_frames_num / num_frames to avoid "
            "it. Shown once per run.",
        )
    return video


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise VideoLoadError(path, "file not found")
    if not os.path.isfile(path):
        raise VideoLoadError(path, "not a regular file")
    size = os.path.getsize(path)
    if size == 0:
        raise VideoLoadError(path, "file is empty (0 bytes)")


def _probe_container(path: str) -> None:
    """Open the container with PyAV and check there is a video stream."""
    try:
        import av  # lazy: optional decoder
    except ImportError:
        return
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoLoadError(path, "not a decodable video (no video stream)")
    except VideoLoadError:
        raise
    except Exception as exc:
        raise VideoLoadError(path, f"not a decodable video ({_short_reason(exc)})") from exc


def _load_decord(path: str, num_frames: int) -> VideoFrames:
    import decord  # lazy: optional decoder; ImportError propagates (auto mode falls back on it)

    try:
        reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    except Exception as exc:
        # decord cannot open a video stream without frames (e.g. an empty
        # AVI); report that case as such rather than as a decoder error.
        if _has_empty_video_stream(path):
            raise VideoLoadError(path, "video has no frames") from exc
        raise VideoLoadError(path, f"not a decodable video ({_short_reason(exc)})") from exc
    try:
        total = len(reader)
        if total < 1:
            raise VideoLoadError(path, "video has no frames")
        indices = frame_indices(total, num_frames)
        try:
            fps = float(reader.get_avg_fps())
            frames = reader.get_batch(indices).asnumpy()
        except Exception as exc:
            raise VideoLoadError(path, f"not a decodable video ({_short_reason(exc)})") from exc
    finally:
        del reader
    frames = _as_rgb_uint8(frames, path)
    if frames.shape[0] != len(indices):
        raise VideoLoadError(
            path,
            f"not a decodable video (decord returned {frames.shape[0]} of {len(indices)} frames)",
        )
    return VideoFrames(frames, indices, int(total), _clean_fps(fps), "decord", path)


def _load_pyav(path: str, num_frames: int) -> VideoFrames:
    import av  # lazy: optional decoder; ImportError propagates

    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoLoadError(path, "not a decodable video (no video stream)")
            stream = container.streams.video[0]
            fps = _stream_fps(stream)
            declared = int(stream.frames or 0)
            if declared > 0:
                indices = frame_indices(declared, num_frames)
                picked, decoded = _decode_indices(container, stream, indices)
                if decoded == declared:
                    return _assemble(picked, indices, declared, fps, path)
                # The container's frame count was wrong (truncated file, odd
                # muxer): fall through and use the count we just decoded.
                total = decoded
            else:
                total = None
        if total is None:
            total = _count_frames(path)
        if total < 1:
            raise VideoLoadError(path, "video has no frames")
        indices = frame_indices(total, num_frames)
        with av.open(path) as container:
            stream = container.streams.video[0]
            picked, decoded = _decode_indices(container, stream, indices)
        missing = sorted(set(indices) - picked.keys())
        if missing:
            raise VideoLoadError(
                path,
                f"not a decodable video (frame {missing[0]} of {total} could not be decoded)",
            )
        return _assemble(picked, indices, total, fps, path)
    except VideoLoadError:
        raise
    except Exception as exc:
        raise VideoLoadError(path, f"not a decodable video ({_short_reason(exc)})") from exc


def _load_cv2(path: str, num_frames: int) -> VideoFrames:
    """OpenCV: the same uniform sampling over the frame count, checked by decoding (as PyAV)."""
    import cv2  # lazy: optional decoder (opencv-python-headless); ImportError propagates

    declared, fps = _cv2_info(cv2, path)
    if declared > 0:
        indices = frame_indices(declared, num_frames)
        picked, decoded = _cv2_decode(cv2, path, indices)
        if decoded == declared:
            return _cv2_frames(picked, indices, declared, fps, path)
        total = decoded  # the container's count was wrong: sample over the frames that decode
    else:
        total = _cv2_decode(cv2, path, [])[1]
    if total < 1:
        raise VideoLoadError(path, "video has no frames")
    indices = frame_indices(total, num_frames)
    picked, _ = _cv2_decode(cv2, path, indices)
    missing = sorted(set(indices) - picked.keys())
    if missing:
        raise VideoLoadError(path, f"not a decodable video (frame {missing[0]} of {total} could not be decoded)")
    return _cv2_frames(picked, indices, total, fps, path)


def _cv2_info(cv2, path: str) -> tuple[int, float]:
    capture = cv2.VideoCapture(path)
    try:
        if not capture.isOpened():
            raise VideoLoadError(path, "not a decodable video (OpenCV cannot open it)")
        return max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)), _clean_fps(capture.get(cv2.CAP_PROP_FPS) or 0)
    finally:
        capture.release()


def _cv2_decode(cv2, path: str, indices: list[int]) -> tuple[dict[int, np.ndarray], int]:
    """Read the stream once (``grab``), converting only the wanted frames; ``({index: rgb}, frames read)``."""
    wanted = set(indices)
    picked: dict[int, np.ndarray] = {}
    capture = cv2.VideoCapture(path)
    count = 0
    try:
        while capture.grab():
            if count in wanted:
                ok, frame = capture.retrieve()
                if ok and frame is not None:
                    picked[count] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            count += 1
    finally:
        capture.release()
    return picked, count


def _cv2_frames(picked, indices, total, fps, path) -> VideoFrames:
    frames = np.stack([picked[i] for i in indices], axis=0)
    return VideoFrames(_as_rgb_uint8(frames, path), list(indices), int(total), fps, "cv2", path)


def _decode_indices(container, stream, indices: list[int]) -> tuple[dict[int, np.ndarray], int]:
    """Decode the stream once, keeping only the wanted frames.

    Returns ({index: rgb frame}, number of frames decoded).  Only the requested
    frames are converted to RGB and kept, so memory stays bounded for long
    videos.
    """
    wanted = set(indices)
    picked: dict[int, np.ndarray] = {}
    stream.thread_type = "AUTO"
    count = 0
    for frame in container.decode(stream):
        if count in wanted:
            picked[count] = frame.to_ndarray(format="rgb24")
        count += 1
    return picked, count


def _has_empty_video_stream(path: str) -> bool:
    """True when PyAV sees a video stream that decodes to zero frames."""
    try:
        import av  # lazy: optional decoder
    except ImportError:
        return False
    try:
        with av.open(path) as container:
            if not container.streams.video:
                return False
        return _count_frames(path) == 0
    except (av.FFmpegError, OSError, ValueError):
        return False


def _count_frames(path: str) -> int:
    import av  # lazy: optional decoder

    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return sum(1 for _ in container.decode(stream))


def _assemble(picked, indices, total, fps, path) -> VideoFrames:
    frames = np.stack([picked[i] for i in indices], axis=0)
    return VideoFrames(_as_rgb_uint8(frames, path), list(indices), int(total), fps, "pyav", path)


def _stream_fps(stream) -> float:
    for attr in ("average_rate", "guessed_rate", "base_rate"):
        rate = getattr(stream, attr, None)
        if rate:
            return _clean_fps(float(rate))
    return 0.0


def _clean_fps(fps: float) -> float:
    fps = float(fps)
    return fps if np.isfinite(fps) and fps > 0 else 0.0


def _as_rgb_uint8(frames, path: str) -> np.ndarray:
    frames = np.ascontiguousarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise VideoLoadError(path, f"not a decodable video (unexpected frame array shape {frames.shape})")
    if frames.dtype != np.uint8:
        frames = frames.astype(np.uint8)
    return frames


def _short_reason(exc: BaseException, limit: int = 160) -> str:
    text = _one_line(str(exc))
    # drop "[Errno N] " (PyAV) and "[hh:mm:ss] /src/file.cc:NN: " (decord) noise
    text = re.sub(r"\[Errno -?\d+\]\s*", "", text)
    text = re.sub(r"\[\d\d:\d\d:\d\d\]\s*\S+:\d+:\s*", "", text)
    text = text.strip() or type(exc).__name__
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


# --------------------------------------------------------------------------- #
# synthetic clips
# --------------------------------------------------------------------------- #


def synthetic_frames(shots, size=(96, 128), seed=0) -> np.ndarray:
    """Deterministic uint8 RGB frames ``[T, H, W, 3]`` with known structure.

    shots: list of ``(kind, n_frames)``:
      "static" - one random blocky texture repeated n_frames times; every
                 static shot gets its own, very different image, so the
                 boundary between shots is a hard scene cut;
      "motion" - a fixed textured background with a bright square moving
                 4 px right and 2 px down per frame (wrapping around).

    Textures are random grey 8x8 blocks plus a gradient and a per-image colour
    tint (constant chroma), so they survive yuv420p chroma subsampling and
    lossy coding well.
    """
    height, width = (int(size[0]), int(size[1]))
    if height < 8 or width < 8:
        raise ValueError(f"size must be at least (8, 8), got {size!r}")
    shots = list(shots)
    if not shots:
        raise ValueError("shots must not be empty")
    rng = np.random.default_rng(seed)
    out = []
    for entry in shots:
        try:
            kind, n = entry
        except (TypeError, ValueError):
            raise ValueError(f"each shot must be (kind, n_frames), got {entry!r}") from None
        if kind not in SHOT_KINDS:
            raise ValueError(f"unknown shot kind {kind!r}; allowed: {', '.join(SHOT_KINDS)}")
        n = _as_int(n, "n_frames")
        if n < 1:
            raise ValueError(f"n_frames must be >= 1, got {n}")
        if kind == "static":
            image, _ = _texture(rng, height, width)
            out.append(np.broadcast_to(image, (n, height, width, 3)))
        else:
            background, offset = _texture(rng, height, width, dim=True)
            out.append(_moving_square(background, offset, n, rng))
    return np.ascontiguousarray(np.concatenate(out, axis=0), dtype=np.uint8)


def _texture(rng: np.random.Generator, height: int, width: int, dim: bool = False):
    """Random blocky texture; returns (uint8 image, colour offset).

    Detail is carried by luma only (random grey 8x8 blocks plus a gradient); a
    per-texture constant colour offset gives each image its own tint.  Keeping
    chroma constant within an image makes yuv420p subsampling nearly lossless.
    """
    block = 8
    bh, bw = -(-height // block), -(-width // block)
    low, high = (40, 140) if dim else (45, 211)
    cells = rng.integers(low, high, size=(bh, bw), dtype=np.int32).astype(np.float32)
    grey = np.repeat(np.repeat(cells, block, axis=0), block, axis=1)[:height, :width]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    grey = grey + (np.cos(angle) * xx / width + np.sin(angle) * yy / height) * 20.0
    offset = rng.integers(-35, 36, size=3).astype(np.float32)
    image = np.clip(grey[..., None] + offset, 0, 255).astype(np.uint8)
    return image, offset


def _moving_square(background, offset, n: int, rng: np.random.Generator) -> np.ndarray:
    height, width = background.shape[:2]
    side = max(4, (min(height, width) // 6) // 2 * 2)
    y0 = int(rng.integers(0, max(1, height - side))) // 2 * 2
    x0 = int(rng.integers(0, max(1, width - side))) // 2 * 2
    colour = np.clip(215.0 + offset, 0, 255).astype(np.uint8)
    frames = np.repeat(background[None], n, axis=0)
    for t in range(n):
        ys = (np.arange(side) + y0 + 2 * t) % height
        xs = (np.arange(side) + x0 + 4 * t) % width
        frames[t][np.ix_(ys, xs)] = colour
    return frames


def write_video(path, frames: np.ndarray, fps: float = 8.0) -> pathlib.Path:
    """Write uint8 RGB frames ``[T, H, W, 3]`` to an H.264 (libx264, yuv420p) file.

    High quality (CRF 12), no B-frames, so decord and PyAV both read back the
    same number of frames.  Height and width must be even (yuv420p).  Falls
    back to MPEG-4 Part 2 at high quality when libx264 is unavailable.  The
    container follows the file suffix (.mp4 intended; .mkv/.avi also work).
    """
    import av  # lazy: optional decoder

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape [T, H, W, 3], got {frames.shape}")
    if frames.shape[0] < 1:
        raise ValueError("frames must contain at least one frame")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    _, height, width, _ = frames.shape
    if height % 2 or width % 2:
        raise ValueError(f"frame height and width must be even for yuv420p, got {height}x{width}")
    if not fps or fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(fps).limit_denominator(1001)
    if "libx264" in av.codecs_available:
        codec, options = "libx264", {"crf": "12", "preset": "medium", "bframes": "0"}
    else:
        codec, options = "mpeg4", {"qscale": "2"}

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        stream.options = options
        if codec == "mpeg4":
            stream.codec_context.bit_rate = 20_000_000
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1) / rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
