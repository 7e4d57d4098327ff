import numpy as np
import pytest

from kdpipe.data.write import SplitWriter, channel_stats, write_split
from kdpipe.io import sha256_file


def test_streamed_file_is_what_np_save_writes_and_its_stats_are_exact(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (1000, 3, 5, 7), dtype=np.uint8)
    writer = SplitWriter(tmp_path / "x.npy", len(x), x.shape[1:])
    for start in range(0, len(x), 64):  # chunked: the file and the statistics must not show it
        writer.append(x[start : start + 64])
    digest = writer.finish()
    np.save(tmp_path / "ref.npy", x)
    assert (tmp_path / "x.npy").read_bytes() == (tmp_path / "ref.npy").read_bytes()
    assert digest == sha256_file(tmp_path / "x.npy")
    mean, std = channel_stats(writer.histograms)
    ref = x.astype(np.float64) / 255
    assert np.allclose(mean, ref.mean(axis=(0, 2, 3)), atol=1e-6)
    assert np.allclose(std, ref.std(axis=(0, 2, 3)), atol=1e-6)


def test_writer_refuses_a_wrong_shape_and_a_short_file(tmp_path):
    writer = SplitWriter(tmp_path / "x.npy", 4, (1, 2, 2))
    with pytest.raises(ValueError, match="expected uint8"):
        writer.append(np.zeros((1, 3, 2, 2), np.uint8))
    writer.append(np.zeros((3, 1, 2, 2), np.uint8))
    with pytest.raises(ValueError, match="3 of the 4 images"):
        writer.finish()


def test_arrays_are_resized_a_chunk_at_a_time(tmp_path, monkeypatch):
    from kdpipe.data import write

    monkeypatch.setattr(write, "ARRAY_CHUNK", 7)
    x = np.random.default_rng(1).integers(0, 256, (20, 3, 8, 8), dtype=np.uint8)
    written = write_split(tmp_path / "x.npy", x, image_size=4, channels=1, workers=1, desc="t")
    whole = write.conform(x, 4, 1)
    assert np.array_equal(np.load(tmp_path / "x.npy"), whole) and written.kept.tolist() == list(range(20))
