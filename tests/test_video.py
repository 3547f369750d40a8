"""Tests for earlytom_eval.video: sampling, synthetic clips, decord/PyAV/OpenCV loading, errors."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from earlytom_eval import video
from earlytom_eval.video import (
    VideoFrames,
    VideoLoadError,
    frame_indices,
    load_video,
    synthetic_frames,
    write_video,
)

SHOTS = [("static", 6), ("motion", 10), ("static", 8)]  # cuts after frames 5 and 15
BACKENDS = ["decord", "pyav", "cv2", "auto"]


def _mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    frames = synthetic_frames(SHOTS, size=(96, 128), seed=1)
    path = write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", frames, fps=8.0)
    return path, frames


# --------------------------------------------------------------------------- #
# frame_indices
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "total, num",
    [
        (100, 8),
        (524, 32),
        (96, 32),
        (32, 32),
        (10, 32),
        (1, 4),
        (7, 1),
        (1, 1),
        (33, 2),
    ],
)
def test_frame_indices_match_linspace(total, num):
    expected = np.linspace(0, total - 1, num, dtype=int).tolist()
    got = frame_indices(total, num)
    assert got == expected
    assert len(got) == num
    assert all(type(i) is int for i in got)


def test_frame_indices_examples():
    assert frame_indices(10, 4) == [0, 3, 6, 9]
    assert frame_indices(3, 5) == [0, 0, 1, 1, 2]  # shorter clip -> duplicates
    assert frame_indices(50, 1) == [0]
    assert frame_indices(1, 3) == [0, 0, 0]


@pytest.mark.parametrize("total, num", [(0, 4), (-1, 4), (10, 0), (10, -2)])
def test_frame_indices_rejects_non_positive(total, num):
    with pytest.raises(ValueError):
        frame_indices(total, num)


# --------------------------------------------------------------------------- #
# synthetic_frames
# --------------------------------------------------------------------------- #


def test_synthetic_frames_structure():
    frames = synthetic_frames(SHOTS, size=(96, 128), seed=1)
    assert frames.shape == (24, 96, 128, 3)
    assert frames.dtype == np.uint8
    # deterministic for a seed, different for another seed
    assert np.array_equal(frames, synthetic_frames(SHOTS, size=(96, 128), seed=1))
    assert not np.array_equal(frames, synthetic_frames(SHOTS, size=(96, 128), seed=2))

    diffs = [_mean_abs(frames[t + 1], frames[t]) for t in range(len(frames) - 1)]
    static_pairs = list(range(5)) + list(range(16, 23))
    motion_pairs = list(range(6, 15))
    assert all(diffs[t] == 0 for t in static_pairs)
    assert all(0 < diffs[t] < 10 for t in motion_pairs)
    assert diffs[5] > 30 and diffs[15] > 30  # hard cuts
    # two static shots are very different images
    assert _mean_abs(frames[0], frames[-1]) > 30


def test_synthetic_frames_motion_moves():
    frames = synthetic_frames([("motion", 4)], size=(64, 64), seed=0)
    changed = np.any(frames[1] != frames[0], axis=-1)
    assert 0 < changed.mean() < 0.5  # only the square region changes


@pytest.mark.parametrize("shots", [[], [("pan", 3)], [("static", 0)], [("static",)]])
def test_synthetic_frames_rejects_bad_shots(shots):
    with pytest.raises(ValueError):
        synthetic_frames(shots)


# --------------------------------------------------------------------------- #
# round trip
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("backend", BACKENDS)
def test_round_trip_all_frames(clip, backend):
    path, frames = clip
    out = load_video(path, len(frames), backend=backend)
    assert isinstance(out, VideoFrames)
    assert out.backend == ("decord" if backend == "auto" else backend)
    assert out.path == str(path)
    assert out.total_frames == len(frames)
    assert out.fps == pytest.approx(8.0)
    assert out.indices == list(range(len(frames)))
    assert out.frames.shape == frames.shape
    assert out.frames.dtype == np.uint8
    assert len(out) == len(frames)
    for t in range(len(frames)):
        assert _mean_abs(out.frames[t], frames[t]) < 4.0, t

    diffs = [_mean_abs(out.frames[t + 1], out.frames[t]) for t in range(len(frames) - 1)]
    assert diffs[5] > 30 and diffs[15] > 30  # cuts survive coding
    assert max(diffs[t] for t in [0, 1, 2, 3, 4, 16, 17, 18, 19, 20, 21, 22]) < 1.0


@pytest.mark.parametrize("backend", ["decord", "pyav", "cv2"])
@pytest.mark.parametrize("num", [1, 5, 8, 40])
def test_round_trip_subsampled(clip, backend, num):
    path, frames = clip
    out = load_video(path, num, backend=backend)
    expected = frame_indices(len(frames), num)
    assert out.indices == expected
    assert out.total_frames == len(frames)
    assert out.frames.shape == (num, *frames.shape[1:])
    for k, idx in enumerate(expected):
        assert _mean_abs(out.frames[k], frames[idx]) < 4.0


def test_backends_agree(clip):
    path, _ = clip
    a = load_video(path, 7, backend="decord")
    b = load_video(path, 7, backend="pyav")
    assert a.indices == b.indices and a.total_frames == b.total_frames
    assert _mean_abs(a.frames, b.frames) < 1.0


def test_cv2_samples_like_the_others(clip):
    path, _ = clip
    a = load_video(path, 7, backend="decord")
    c = load_video(path, 7, backend="cv2")
    assert c.backend == "cv2" and c.indices == a.indices and c.total_frames == a.total_frames
    assert c.fps == pytest.approx(a.fps)
    assert _mean_abs(a.frames, c.frames) < 1.0


def test_auto_falls_back_to_cv2_without_decord_and_pyav(clip, monkeypatch):
    path, _ = clip
    monkeypatch.setitem(sys.modules, "decord", None)  # import raises ImportError: as on the GPU machines
    monkeypatch.setitem(sys.modules, "av", None)
    out = load_video(path, 5, backend="auto")
    assert out.backend == "cv2" and out.indices == frame_indices(24, 5)


def test_no_decoder_installed_is_one_clear_line(clip, monkeypatch):
    path, _ = clip
    for name in ("decord", "av", "cv2"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(VideoLoadError) as err:
        load_video(path, 4, backend="auto")
    _assert_one_line(err, path, "no video decoder installed")


def test_write_video_odd_size_and_fps(tmp_path):
    frames = synthetic_frames([("motion", 5)], size=(48, 64), seed=3)
    path = write_video(tmp_path / "sub" / "ntsc.mp4", frames, fps=29.97)
    assert path.exists()
    for backend in ("decord", "pyav"):
        out = load_video(path, 5, backend=backend)
        assert out.total_frames == 5
        assert out.fps == pytest.approx(29.97, rel=1e-3)
    with pytest.raises(ValueError):
        write_video(tmp_path / "odd.mp4", np.zeros((2, 47, 64, 3), np.uint8))
    with pytest.raises(ValueError):
        write_video(tmp_path / "gray.mp4", np.zeros((2, 48, 64), np.uint8))


def test_single_frame_clip(tmp_path):
    frames = synthetic_frames([("static", 1)], size=(32, 32))
    path = write_video(tmp_path / "one.mp4", frames)
    for backend in ("decord", "pyav"):
        out = load_video(path, 4, backend=backend)
        assert out.indices == [0, 0, 0, 0]
        assert out.frames.shape == (4, 32, 32, 3)


# --------------------------------------------------------------------------- #
# errors
# --------------------------------------------------------------------------- #


def _assert_one_line(err: pytest.ExceptionInfo, path, *needles: str) -> None:
    msg = str(err.value)
    assert "\n" not in msg
    assert str(path) in msg
    for needle in needles:
        assert needle in msg, msg


@pytest.mark.parametrize("backend", BACKENDS)
def test_missing_file(tmp_path, backend):
    path = tmp_path / "nope.mp4"
    with pytest.raises(VideoLoadError) as err:
        load_video(path, 4, backend=backend)
    _assert_one_line(err, path, "file not found")


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_file(tmp_path, backend):
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    with pytest.raises(VideoLoadError) as err:
        load_video(path, 4, backend=backend)
    _assert_one_line(err, path, "empty")


@pytest.mark.parametrize("backend", BACKENDS)
def test_garbage_file(tmp_path, backend):
    path = tmp_path / "garbage.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(VideoLoadError) as err:
        load_video(path, 4, backend=backend)
    _assert_one_line(err, path, "not a decodable video")


@pytest.mark.parametrize("backend", BACKENDS)
def test_truncated_file(clip, tmp_path, backend):
    src, _ = clip
    data = src.read_bytes()
    path = tmp_path / "tail.mp4"
    path.write_bytes(data[len(data) // 2 :])  # header gone
    with pytest.raises(VideoLoadError) as err:
        load_video(path, 4, backend=backend)
    _assert_one_line(err, path)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_frame_video(tmp_path, backend):
    import av

    path = tmp_path / "zero.avi"
    container = av.open(str(path), mode="w")
    stream = container.add_stream("mpeg4", rate=8)
    stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
    container.start_encoding()
    container.close()
    assert path.stat().st_size > 0
    with pytest.raises(VideoLoadError) as err:
        load_video(path, 4, backend=backend)
    _assert_one_line(err, path, "video has no frames")


def test_unknown_backend(clip):
    path, _ = clip
    with pytest.raises(ValueError) as err:
        load_video(path, 4, backend="opencv")
    msg = str(err.value)
    assert "\n" not in msg and "opencv" in msg
    for name in ("auto", "decord", "pyav"):
        assert name in msg


@pytest.mark.parametrize("num", [0, -3])
def test_bad_num_frames(clip, num):
    path, _ = clip
    with pytest.raises(ValueError):
        load_video(path, num)


def test_video_load_error_is_value_error(tmp_path):
    err = VideoLoadError(tmp_path / "x.mp4", "something\nwent wrong")
    assert isinstance(err, ValueError)
    assert str(err) == f"cannot read video {str(tmp_path / 'x.mp4')!r}: something went wrong"


# --------------------------------------------------------------------------- #
# auto fallback
# --------------------------------------------------------------------------- #


def test_auto_falls_back_to_pyav_when_decord_fails(clip, monkeypatch):
    path, frames = clip
    calls = []

    def broken_decord(p, n):
        calls.append(p)
        raise RuntimeError("decord exploded")

    monkeypatch.setattr(video, "_load_decord", broken_decord)
    out = load_video(path, 6, backend="auto")
    assert calls == [str(path)]
    assert out.backend == "pyav"
    assert out.indices == frame_indices(len(frames), 6)
    assert out.frames.shape == (6, *frames.shape[1:])


def test_auto_falls_back_when_decord_not_installed(clip, monkeypatch):
    path, _ = clip
    monkeypatch.setitem(sys.modules, "decord", None)  # import decord -> ImportError
    out = load_video(path, 3, backend="auto")
    assert out.backend == "pyav"
    with pytest.raises(ImportError):
        load_video(path, 3, backend="decord")


def test_forced_decord_does_not_fall_back(clip, monkeypatch):
    path, _ = clip

    def broken_decord(p, n):
        raise VideoLoadError(p, "not a decodable video (simulated)")

    monkeypatch.setattr(video, "_load_decord", broken_decord)
    with pytest.raises(VideoLoadError, match="simulated"):
        load_video(path, 3, backend="decord")


def test_module_import_does_not_import_decoders():
    import subprocess

    # load the module file on its own (not via the package __init__, which
    # other modules may extend) and check neither decoder got imported
    code = (
        "import importlib.util, sys; "
        f"spec = importlib.util.spec_from_file_location('v', {video.__file__!r}); "
        "m = importlib.util.module_from_spec(spec); sys.modules['v'] = m; "
        "spec.loader.exec_module(m); "
        "print('decord' in sys.modules, 'av' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_pyav_counts_frames_when_container_has_no_count(tmp_path):
    # Matroska stores no frame count, so PyAV must count by decoding.
    import av

    frames = synthetic_frames([("static", 4), ("motion", 9)], size=(48, 64), seed=5)
    path = write_video(tmp_path / "clip.mkv", frames, fps=10.0)
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0
    for backend in ("pyav", "decord"):
        out = load_video(path, 6, backend=backend)
        assert out.total_frames == len(frames)
        assert out.indices == frame_indices(len(frames), 6)
        for k, idx in enumerate(out.indices):
            assert _mean_abs(out.frames[k], frames[idx]) < 4.0
