"""The writers do what they claim, checked by reading the files back with PyAV and soundfile
(never with mmfuse's own readers, which these files exist to test)."""

from __future__ import annotations

import shutil

import av
import numpy as np
import pytest
import soundfile as sf
from PIL import Image, ImageOps

from media_factory import (
    FPS,
    frame_index,
    huge_header_png,
    index_frames,
    make_corpus,
    pattern,
    tone,
    truncated_mp4,
    vfr_timestamps,
    video_file,
)
from mmfuse.data.writers import write_audio, write_video

CONTAINERS = [("libx264", ".mp4"), ("libvpx-vp9", ".webm"), ("mpeg4", ".avi"), ("mpeg4", ".mp4")]


def decode(path):
    """Every frame as (index drawn in it, time in seconds), plus the header's frame count."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [
            (frame_index(f.to_ndarray(format="rgb24")), float(f.time))
            for f in container.decode(stream)
        ]
        return frames, stream.frames


def keyframe_indices(path) -> list[int]:
    """Which frames (in presentation order) are key frames, from a packet scan: no decoding."""
    with av.open(str(path)) as container:
        packets = [p for p in container.demux(video=0) if p.size]
    order = sorted(p.pts for p in packets)
    return [order.index(p.pts) for p in packets if p.is_keyframe]


@pytest.mark.parametrize(("codec", "suffix"), CONTAINERS)
def test_frames_round_trip_in_order(tmp_path, codec, suffix):
    path = video_file(tmp_path, f"v{suffix}", frames=30, codec=codec)
    frames, _ = decode(path)
    assert [i for i, _ in frames] == list(range(30))
    assert [t for _, t in frames] == pytest.approx([i / FPS for i in range(30)])


def test_array_and_generator_give_the_same_video(tmp_path):
    array = np.stack(list(index_frames(12)))  # T×H×W×3
    a = write_video(tmp_path / "array.mp4", array)
    b = write_video(tmp_path / "gen.mp4", index_frames(12))
    assert decode(a) == decode(b)


@pytest.mark.parametrize(("codec", "suffix"), CONTAINERS[:3])
@pytest.mark.parametrize("interval", [7, 30])
def test_keyframes_land_every_interval(tmp_path, codec, suffix, interval):
    path = video_file(tmp_path, f"k{suffix}", frames=65, codec=codec, keyframe_interval=interval)
    assert keyframe_indices(path) == list(range(0, 65, interval))


def test_keyframe_every_250(tmp_path):
    path = video_file(tmp_path, "k250.mp4", frames=300, keyframe_interval=250)
    assert keyframe_indices(path) == [0, 250]


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".webm"])
def test_variable_frame_rate_timestamps_kept(tmp_path, suffix):
    times = vfr_timestamps(20)
    codec = "libvpx-vp9" if suffix == ".webm" else "libx264"
    path = video_file(tmp_path, f"vfr{suffix}", frames=20, codec=codec, timestamps=times)
    frames, _ = decode(path)
    assert [i for i, _ in frames] == list(range(20))
    assert [t for _, t in frames] == pytest.approx(times, abs=1e-3)


def test_bad_timestamps_are_refused(tmp_path):
    with pytest.raises(ValueError, match="strictly increasing"):
        write_video(tmp_path / "v.mp4", index_frames(3), timestamps=[0.0, 0.1, 0.1])
    with pytest.raises(ValueError, match="constant frame rate"):
        write_video(tmp_path / "v.avi", index_frames(3), codec="mpeg4", timestamps=[0, 0.1, 0.3])


@pytest.mark.parametrize(
    ("codec", "suffix", "audio_codec"),
    [
        ("libx264", ".mp4", "aac"),
        ("libx264", ".mkv", "aac"),
        ("libvpx-vp9", ".webm", "opus"),
        ("mpeg4", ".avi", "pcm_s16le"),
    ],
)
def test_audio_track_muxed(tmp_path, codec, suffix, audio_codec):
    path = video_file(tmp_path, f"a{suffix}", frames=25, codec=codec, audio=True, audio_rate=16000)
    with av.open(str(path)) as container:
        audio = container.streams.audio[0]
        assert audio.codec_context.name == audio_codec
        # FFmpeg's opus decoder always outputs 48 kHz, whatever rate was encoded
        assert audio.rate == (48000 if audio_codec == "opus" else 16000)
        assert audio.channels == 1
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio)])
    assert len(samples) / audio.rate == pytest.approx(1.0, abs=0.1)  # 25 frames at 25 fps
    frames, count = decode(path)
    assert [i for i, _ in frames] == list(range(25))  # the audio did not shift the video
    assert count in (0, 25)  # 0: Matroska/WebM keep no frame count


def test_stereo_audio_track(tmp_path):
    audio = tone(1.0, 16000, channels=2)
    path = write_video(tmp_path / "s.mp4", index_frames(25), audio=audio)
    with av.open(str(path)) as container:
        assert container.streams.audio[0].channels == 2


@pytest.mark.parametrize(("codec", "suffix"), CONTAINERS)
def test_odd_size_round_trips(tmp_path, codec, suffix):
    path = video_file(tmp_path, f"odd{suffix}", frames=5, size=(321, 239), codec=codec)
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert [f.shape for f in frames] == [(239, 321, 3)] * 5
    assert [frame_index(f) for f in frames] == list(range(5))


def test_odd_size_with_yuv420p_x264_is_refused(tmp_path):
    with pytest.raises(ValueError, match="yuv444p"):
        write_video(tmp_path / "o.mp4", index_frames(2, 321, 239), pix_fmt="yuv420p")


def test_rotation_is_stored_as_display_matrix(tmp_path):
    path = video_file(tmp_path, "r.mp4", frames=3, rotation=90)
    with av.open(str(path)) as container:
        assert next(container.decode(video=0)).rotation == 90


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg CLI")
def test_ffmpeg_cli_rotate_tag_reads_as_rotation(tmp_path):
    from media_factory import rotated_video_cli

    path = rotated_video_cli(tmp_path, video_file(tmp_path, "plain.mp4", frames=3))
    with av.open(str(path)) as container:
        assert next(container.decode(video=0)).rotation == 90


def test_faststart_puts_the_index_first(tmp_path):
    fast = video_file(tmp_path, "fast.mp4", frames=10, faststart=True).read_bytes()
    slow = video_file(tmp_path, "slow.mp4", frames=10).read_bytes()
    assert fast.find(b"moov") < fast.find(b"mdat")
    assert slow.find(b"moov") > slow.find(b"mdat")


def test_truncated_mp4_promises_more_frames_than_it_holds(tmp_path):
    clean = truncated_mp4(tmp_path, at_packet_boundary=True)
    frames, count = decode(clean)  # no exception: the demuxer just runs out
    assert count == 300
    assert 0 < len(frames) < 300
    assert [i for i, _ in frames] == list(range(len(frames)))

    cut = truncated_mp4(tmp_path)  # cut inside a packet
    with av.open(str(cut)) as container, pytest.raises(av.error.InvalidDataError):
        for _ in container.decode(video=0):
            pass


@pytest.mark.parametrize(
    ("suffix", "rate", "channels", "subtype"),
    [
        (".wav", 16000, 1, None),
        (".wav", 44100, 2, "FLOAT"),
        (".wav", 8000, 1, "PCM_24"),
        (".flac", 48000, 2, None),
        (".ogg", 16000, 1, None),
        (".mp3", 44100, 2, None),
        (".opus", 48000, 2, None),
        (".opus", 16000, 1, None),
        (".m4a", 16000, 1, None),
        (".aac", 44100, 2, None),
    ],
)
def test_audio_formats_read_back(tmp_path, suffix, rate, channels, subtype):
    samples = tone(0.5, rate, channels)
    path = write_audio(tmp_path / f"t{suffix}", samples, rate, subtype=subtype)
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        decoded = sum(frame.samples for frame in container.decode(stream))
        # FFmpeg's opus decoder always outputs 48 kHz, whatever rate was encoded
        assert stream.rate == (48000 if suffix == ".opus" else rate)
        assert stream.channels == channels
    # lossy codecs pad with encoder delay (aac: 1024 samples) and round up to whole frames
    assert decoded / stream.rate == pytest.approx(0.5, abs=0.1)
    if suffix in (".wav", ".flac", ".ogg", ".mp3", ".opus"):  # libsndfile reads these, not aac
        info = sf.info(str(path))
        assert (info.samplerate, info.channels) == (rate, channels)


def test_wav_subtypes_and_clipping(tmp_path):
    loud = np.array([0.0, 0.5, 1.5, -2.0], np.float32)
    pcm = write_audio(tmp_path / "pcm.wav", loud, 8000)
    flt = write_audio(tmp_path / "flt.wav", loud, 8000, subtype="FLOAT")
    assert sf.info(str(pcm)).subtype == "PCM_16"
    assert sf.read(str(pcm))[0] == pytest.approx([0.0, 0.5, 1.0, -1.0], abs=1e-4)  # clipped
    assert sf.read(str(flt), dtype="float32")[0].tolist() == loud.tolist()  # kept exactly


def test_audio_writer_errors_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match=r"\.wav"):
        write_audio(tmp_path / "t.xyz", tone(0.1), 16000)
    with pytest.raises(ValueError, match="subtype"):
        write_audio(tmp_path / "t.mp3", tone(0.1), 16000, subtype="PCM_16")


def test_exif_jpeg_displays_upright(tmp_path):
    from media_factory import exif_rotated_jpeg

    with Image.open(exif_rotated_jpeg(tmp_path)) as img:
        assert img.size == (32, 48)  # stored sideways
        upright = np.asarray(ImageOps.exif_transpose(img))
    assert np.abs(upright.astype(int) - pattern(48, 32)).mean() < 5


def test_huge_header_png_reports_its_size_without_data(tmp_path):
    path = huge_header_png(tmp_path)
    with pytest.raises(Image.DecompressionBombError):  # Pillow's default guard
        Image.open(path)
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with Image.open(path) as img:
            assert img.size == (100_000, 100_000)
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def test_corpus_builds_every_case(tmp_path):
    media = make_corpus(tmp_path)
    assert all(path.exists() for path in media.values())
    assert media["empty_wav"].stat().st_size == 0
    with Image.open(media["png_named_jpg"]) as img:
        assert img.format == "PNG"
    with Image.open(media["png_p"]) as img:
        assert img.mode == "P" and "transparency" in img.info
    with Image.open(media["png_i16"]) as img:
        assert img.mode == "I;16"
    with Image.open(media["jpeg_cmyk"]) as img:
        assert img.mode == "CMYK"
    assert sf.info(str(media["wav_20ms"])).frames == 320
    assert np.abs(sf.read(str(media["wav_near_silent"]))[0]).max() < 1e-3
    assert keyframe_indices(media["keyint_30"]) == [0, 30, 60]
