"""A failed write leaves the file that was there bit-identical and nothing beside it (the one
atomic writer, here for figures: a savefig that fails half-way, a missing folder)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg", force=False)

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from latentsurgeon._io import save_figure_atomic  # noqa: E402


class _Broken(RuntimeError):
    pass


def test_a_failing_savefig_leaves_the_existing_file_bit_identical(tmp_path, monkeypatch):
    path = tmp_path / "plot.png"
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    save_figure_atomic(fig, path)
    before = path.read_bytes()

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])

    def half_then_fail(handle, **kwargs):
        handle.write(b"\x89PNG half an image")  # bytes reach the temporary file first
        raise _Broken("renderer failed")

    monkeypatch.setattr(fig, "savefig", half_then_fail)
    with pytest.raises(_Broken):
        save_figure_atomic(fig, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.png"]
    assert not plt.fignum_exists(fig.number)  # closed also after the failure


def test_a_missing_folder_is_an_oserror_and_writes_nothing(tmp_path):
    fig, _ = plt.subplots()
    with pytest.raises(OSError):
        save_figure_atomic(fig, tmp_path / "missing" / "plot.png")
    assert list(tmp_path.iterdir()) == []
