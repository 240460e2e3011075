"""The one atomic figure writer: a readable image in the format the suffix names, the figure
closed (or kept open for a report that embeds it afterwards), nothing left beside the file."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg", force=False)

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from latentsurgeon._io import save_figure_atomic  # noqa: E402


def _figure():
    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot([0, 1, 2], [1, 0, 1])
    return fig


def test_writes_a_readable_png_and_closes_the_figure(tmp_path):
    fig = _figure()
    path = save_figure_atomic(fig, tmp_path / "plot.png")
    assert path == tmp_path / "plot.png"
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG" and image.width > 10 and image.height > 10
    assert not plt.fignum_exists(fig.number)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.png"]  # no temporary left


def test_close_false_keeps_the_figure_open(tmp_path):
    fig = _figure()
    save_figure_atomic(fig, tmp_path / "plot.png", close=False)
    assert plt.fignum_exists(fig.number)
    plt.close(fig)


@pytest.mark.parametrize(("name", "magic"), [("plot.svg", b"<?xml"), ("plot.pdf", b"%PDF"),
                                             ("plot", b"\x89PNG")])
def test_the_suffix_names_the_format(tmp_path, name, magic):
    path = save_figure_atomic(_figure(), tmp_path / name)
    assert path.read_bytes().startswith(magic)


def test_a_file_that_cannot_be_written_is_named_not_a_temporary_file(tmp_path):
    from latentsurgeon._io import write_text_atomic

    (tmp_path / "a-file").write_text("kept")
    cases = [(tmp_path, IsADirectoryError, "is a folder"),
             (tmp_path / "gone" / "x.txt", FileNotFoundError, "does not exist"),
             (tmp_path / "a-file" / "x.txt", FileNotFoundError, "a-file is a file, not a folder")]
    for path, error, text in cases:
        with pytest.raises(error) as info:
            write_text_atomic(path, "new")
        assert text in str(info.value) and info.value.filename == str(path)
        assert ".tmp" not in str(info.value)
    assert (tmp_path / "a-file").read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]
