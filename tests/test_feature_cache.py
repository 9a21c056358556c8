"""Feature cache: content hashes, encoder fingerprints, damaged entries and a real SIGKILL."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import torch

from mmfuse.encoders import build
from mmfuse.encoders.image_cnn import SmallCNN
from mmfuse.train import feature_cache
from mmfuse.train.feature_cache import FeatureCache, content_hash, encoder_fingerprint

FP = "f" * 64


def key_for(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def tiny_cnn(seed: int = 0, **options):
    torch.manual_seed(seed)
    return build("image", "cnn", **{"width": 4, "stages": 1, **options})


# --------------------------------------------------------------------------- content_hash


def test_file_hash_is_the_sha256_of_the_bytes_across_chunks(tmp_path):
    data = np.random.default_rng(0).bytes(2_500_000)  # spans three 1 MiB reads
    a, b = tmp_path / "a.bin", tmp_path / "sub" / "b.bin"
    b.parent.mkdir()
    a.write_bytes(data)
    b.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert content_hash(a, is_path=True) == expected
    assert content_hash(str(b), is_path=True) == expected  # same content, other file: same key


def test_file_hash_is_memoised_until_the_file_changes(tmp_path, monkeypatch):
    opened = []

    def counting_open(path, *args, **kwargs):
        opened.append(path)
        return open(path, *args, **kwargs)

    monkeypatch.setattr(feature_cache, "open", counting_open, raising=False)
    path = tmp_path / "clip.wav"
    path.write_bytes(b"first")
    first = content_hash(path, is_path=True)
    assert content_hash(path, is_path=True) == first
    assert content_hash(tmp_path / "." / "clip.wav", is_path=True) == first  # resolved path
    assert len(opened) == 1

    # Same size, and mtime put back as it was: the write still changed ctime, so it is rehashed.
    st = path.stat()
    time.sleep(0.05)  # past the kernel's coarse timestamp tick, as any real edit would be
    path.write_bytes(b"other")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    second = content_hash(path, is_path=True)
    assert len(opened) == 2
    assert second == hashlib.sha256(b"other").hexdigest() != first


def test_text_hash_differs_from_the_hash_of_a_file_with_that_text(tmp_path):
    path = tmp_path / "caption.txt"
    path.write_text("a dog", encoding="utf-8")
    text = content_hash("a dog", is_path=False)
    assert text == content_hash("a dog", is_path=False)
    assert text != content_hash(path, is_path=True)
    assert text != content_hash("a cat", is_path=False)
    with pytest.raises(TypeError, match="is_path=True"):
        content_hash(path, is_path=False)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.jpg"):
        content_hash(tmp_path / "nope.jpg", is_path=True)


# --------------------------------------------------------------------------- fingerprint


def test_fingerprint_follows_weights_options_and_extra():
    base = encoder_fingerprint(tiny_cnn(seed=0))
    assert len(base) == 64
    assert encoder_fingerprint(tiny_cnn(seed=0)) == base
    assert encoder_fingerprint(tiny_cnn(seed=1)) != base  # same architecture, other weights
    assert encoder_fingerprint(tiny_cnn(seed=0, image_size=112)) != base  # same weights
    assert encoder_fingerprint(tiny_cnn(seed=0), extra={"crop": "center"}) != base
    assert encoder_fingerprint(tiny_cnn(seed=0), extra={"a": 1, "b": 2}) == encoder_fingerprint(
        tiny_cnn(seed=0), extra={"b": 2, "a": 1}
    )

    encoder = tiny_cnn(seed=0)
    with torch.no_grad():
        encoder.features[0][1].running_mean += 1  # buffers are part of the output too
    assert encoder_fingerprint(encoder) != base


def test_fingerprint_of_encoders_without_a_registered_config():
    torch.manual_seed(0)
    direct = SmallCNN(width=4, stages=1)  # config() raises: not made by build
    assert encoder_fingerprint(direct) != encoder_fingerprint(tiny_cnn(seed=0))
    linear = torch.nn.Linear(3, 2).to(torch.bfloat16)
    assert encoder_fingerprint(linear) == encoder_fingerprint(linear)
    with pytest.raises(ValueError, match="JSON-safe"):
        encoder_fingerprint(linear, extra={"fn": print})


def test_fingerprint_is_the_same_in_another_process():
    code = textwrap.dedent(
        """
        import torch
        from mmfuse.encoders import build
        from mmfuse.train.feature_cache import encoder_fingerprint
        torch.manual_seed(0)
        print(encoder_fingerprint(build("image", "cnn", width=4, stages=1), extra={"x": [1]}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == encoder_fingerprint(tiny_cnn(seed=0), extra={"x": [1]})


# --------------------------------------------------------------------------- the cache


def test_put_get_round_trip(tmp_path):
    cache = FeatureCache(tmp_path, FP, description={"name": "cnn"})
    assert not cache.dir.exists()  # nothing written before the first put
    key = key_for(0)
    assert cache.get(key) is None
    assert key not in cache
    assert len(cache) == 0

    feature = torch.randn(16)
    cache.put(key, feature)
    got = cache.get(key)
    assert got.dtype == torch.float32 and torch.equal(got, feature)
    assert key in cache and len(cache) == 1
    assert (cache.dir / key[:2] / f"{key}.npy").is_file()
    assert '"name": "cnn"' in (cache.dir / "encoder.json").read_text()

    # Other dtypes are stored as float32; a second put overwrites.
    cache.put(key, torch.arange(3, dtype=torch.float64, requires_grad=True))
    assert torch.equal(cache.get(key), torch.tensor([0.0, 1.0, 2.0]))
    assert len(cache) == 1
    # Another fingerprint is another folder: no entries shared.
    assert FeatureCache(tmp_path, "0" * 64).get(key) is None


def test_put_rejects_batches_and_unsafe_keys(tmp_path):
    cache = FeatureCache(tmp_path, FP)
    with pytest.raises(ValueError, match=r"1-D.*\(2, 8\)"):
        cache.put(key_for(0), torch.zeros(2, 8))
    with pytest.raises(ValueError, match="1-D"):
        cache.put(key_for(0), torch.tensor(1.0))
    for bad in ("", "../x", ".hidden", "a/b"):
        with pytest.raises(ValueError, match="content_hash"):
            cache.put(bad, torch.zeros(4))
    with pytest.raises(ValueError, match="encoder_fingerprint"):
        FeatureCache(tmp_path, "../up")
    with pytest.raises(ValueError, match="JSON-safe"):
        FeatureCache(tmp_path, FP, description={"path": tmp_path})


def half(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "truncated": half,
    "empty": lambda p: p.write_bytes(b""),
    "garbage": lambda p: p.write_bytes(os.urandom(300)),
    "2-D": lambda p: np.save(p, np.zeros((2, 4), np.float32)),
    "float64": lambda p: np.save(p, np.zeros(4)),
    "pickle": lambda p: np.save(p, np.array([{"x": 1}], dtype=object), allow_pickle=True),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_entry_is_a_miss_and_is_removed(tmp_path, damage):
    cache = FeatureCache(tmp_path, FP)
    key = key_for(0)
    cache.put(key, torch.ones(64))
    path = cache.dir / key[:2] / f"{key}.npy"
    DAMAGE[damage](path)
    assert cache.get(key) is None
    assert not path.exists()
    cache.put(key, torch.ones(64))  # recomputed and stored again
    assert torch.equal(cache.get(key), torch.ones(64))


def test_len_and_clear_scratch_ignore_live_temp_files(tmp_path):
    cache = FeatureCache(tmp_path, FP)
    cache.put(key_for(0), torch.ones(4))
    shard = cache.dir / key_for(0)[:2]
    old, fresh = shard / f".{key_for(1)}.npy.1-aa.tmp", shard / f".{key_for(2)}.npy.2-bb.tmp"
    old.write_bytes(b"partial")
    fresh.write_bytes(b"partial")
    os.utime(old, (time.time() - 3600,) * 2)
    assert len(cache) == 1
    assert cache.clear_scratch() == 1  # the fresh one may belong to a live writer
    assert not old.exists() and fresh.exists()
    assert cache.clear_scratch(older_than=0) == 1
    assert sorted(p.name for p in shard.iterdir()) == [f"{key_for(0)}.npy"]


def test_concurrent_writers_of_one_key(tmp_path):
    cache = FeatureCache(tmp_path, FP)
    key, value = key_for(7), torch.full((256,), 7.0)

    def write():
        for _ in range(25):
            cache.put(key, value)
            assert torch.equal(cache.get(key), value)

    threads = [threading.Thread(target=write) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert torch.equal(cache.get(key), value)
    assert [p.name for p in (cache.dir / key[:2]).iterdir()] == [f"{key}.npy"]


# Puts entries in a loop until SIGKILLed: no cleanup, no finally blocks run. Keys cycle so that
# entries are also overwritten while a kill lands, each writer from its own starting point.
WRITER = textwrap.dedent(
    """
    import hashlib, itertools, sys
    import torch
    from mmfuse.train.feature_cache import FeatureCache

    cache = FeatureCache(sys.argv[1], sys.argv[2])
    print("ready", flush=True)
    for n in itertools.count(int(sys.argv[3])):
        i = n % 500
        cache.put(hashlib.sha256(str(i).encode()).hexdigest(), torch.full((64,), float(i)))
    """
)


@pytest.mark.skipif(os.name != "posix", reason="needs SIGKILL")
def test_sigkill_mid_put_leaves_only_complete_entries(tmp_path):
    # Several writers share the folder: each kill is another chance to land mid-write, and
    # they race on the same keys. Started together, their torch imports overlap.
    children = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), FP, str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        for start in (0, 170, 340)
    ]
    try:
        for child in children:
            if child.stdout.readline() != "ready\n":
                child.wait(timeout=30)
                pytest.fail(f"writer failed to start: {child.stderr.read()}")
        time.sleep(0.3)
    finally:
        for child in children:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
            child.stdout.close()
            child.stderr.close()
    assert [child.returncode for child in children] == [-signal.SIGKILL] * len(children)

    cache = FeatureCache(tmp_path, FP)
    expected = {key_for(i): torch.full((64,), float(i)) for i in range(500)}
    entries = sorted(cache.dir.glob("*/*.npy"))
    assert entries, "the writers stored nothing in 0.3 s"
    for path in entries:
        key = path.stem
        assert torch.equal(cache.get(key), expected[key]), key
    assert len(cache) == len(entries)

    leftovers = list(cache.dir.glob("*/*.tmp"))
    assert cache.clear_scratch(older_than=0) == len(leftovers)
    assert not list(cache.dir.glob("*/*.tmp"))
    assert len(cache) == len(entries)  # clearing scratch never touches complete entries
