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
