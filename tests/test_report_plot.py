"""results.png (rag/report.py): a missing cell (a method not evaluated under a setting) is marked, never drawn as a
0% bar; every present cell is a bar of its Match with its interval."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from matplotlib.patches import Rectangle  # noqa: E402

from rag import report  # noqa: E402


def _stats(match: float) -> dict:
    return {"match": match, "em": match, "f1": match, "match_ci95": [match - 0.1, match + 0.1]}


RESULTS = {"methods": {
    "base": {"trainable_params": 0, "settings": {"gold": _stats(0.8), "top5": _stats(0.6), "noise_only": _stats(0.4)},
             "by_kind": {}},
    "neurorit": {"trainable_params": 5, "settings": {"gold": _stats(0.7), "noise_only": _stats(0.5)},  # no top5
                 "by_kind": {}},
}}


def _bars(ax) -> list[tuple[float, float]]:
    """(center x, height) of every bar drawn in ``ax``."""
    return sorted((round(p.get_x() + p.get_width() / 2, 6), round(p.get_height(), 6))
                  for p in ax.patches if isinstance(p, Rectangle))


def test_missing_cell_is_marked_not_a_zero_bar(tmp_path):
    fig = report.figure(RESULTS)
    ax = fig.axes[0]
    settings, cells = report._panel(RESULTS, None)
    assert settings == ["gold", "top5", "noise_only"]
    heights = [h for _, h in _bars(ax)]
    assert len(heights) == 5 and 0.0 not in heights  # 3 + 2 bars: none for neurorit's top5
    (missing_x,) = [x for x, st in cells["neurorit"] if st is None]
    marks = [t for t in ax.texts if t.get_text() == report.MISSING]
    assert len(marks) == 1 and abs(marks[0].get_position()[0] - missing_x) < 1e-9
    assert sorted(heights) == sorted([80.0, 60.0, 40.0, 70.0, 50.0])  # in %, as every table
    path = report.plot(RESULTS, str(tmp_path / "results.png"))
    assert open(path, "rb").read(4) == b"\x89PNG"


def test_nothing_missing_nothing_marked():
    full = {"methods": {"base": RESULTS["methods"]["base"]}}
    ax = report.figure(full).axes[0]
    assert not [t for t in ax.texts if t.get_text() == report.MISSING] and len(_bars(ax)) == 3
