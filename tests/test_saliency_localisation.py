"""Localisation scores on hand-made maps and boxes with known answers."""
import cv2
import numpy as np
import pandas as pd
import pytest

from chestkd.errors import DataError
from chestkd.saliency.analysis.localisation import (box_overlap, centre_baseline_maps,
                                                    energy_in_box, localisation_scores,
                                                    pointing_hit, pointing_tolerance,
                                                    region_boxes, scale_boxes,
                                                    summarise_localisation,
                                                    write_localisation_tables)


def peak_map(row, col, size=32):
    m = np.zeros((size, size), np.float32)
    m[row, col] = 1.0
    return m


def test_pointing_game_with_tolerance():
    m = peak_map(10, 20)                                   # centre at (20.5, 10.5)
    assert pointing_hit(m, (18, 8, 5, 5), tolerance=0)
    assert not pointing_hit(m, (0, 0, 5, 5), tolerance=0)
    assert pointing_tolerance(224) == 15 and pointing_tolerance(32) == pytest.approx(15 * 32 / 224)
    tol = pointing_tolerance(32)                           # 2.14 px
    assert pointing_hit(m, (22.5, 8, 3, 3), tol)           # 2.0 px left of the box
    assert not pointing_hit(m, (22.7, 8, 3, 3), tol)       # 2.2 px
    assert not pointing_hit(m, (18, 13.0, 4, 4), tol)      # 2.5 px above


def test_energy_counts_only_the_non_negative_mass_inside():
    m = np.zeros((32, 32))
    m[:16] = 1.0                                           # top half: mass 512
    m[16:] = -1.0                                          # negative part is ignored
    assert energy_in_box(m, (0, 0, 16, 16)) == pytest.approx(0.5)
    assert energy_in_box(m, (0, 16, 32, 16)) == pytest.approx(0.0)
    m[3, 3] = 3.0                                          # mass 514, 258 in the box
    assert energy_in_box(m, (0, 0, 16, 16)) == pytest.approx(258 / 514)
    # A map without positive mass puts nothing in the box, and a flat map points nowhere
    # (regression: NaN energy dropped exactly the boxes where a method produced nothing, and
    # a flat map "pointed" at pixel (0, 0), a hit for a box near the top left).
    assert energy_in_box(np.zeros((8, 8)), (0, 0, 4, 4)) == 0.0
    assert not pointing_hit(np.zeros((8, 8)), (0, 0, 4, 4), tolerance=1.0)
    assert not pointing_hit(np.full((8, 8), 0.3), (0, 0, 4, 4), tolerance=1.0)


def test_region_boxes_iou_and_iobb():
    m = np.zeros((32, 32))
    m[4:12, 4:12] = 1.0                                    # region box (4, 4, 8, 8)
    m[25:28, 25:27] = 0.8                                  # a second region (25, 25, 2, 3)
    m[20, 2] = 0.3                                         # below the 0.5 threshold
    assert sorted(region_boxes(m, 0.5)) == [(4.0, 4.0, 8.0, 8.0), (25.0, 25.0, 2.0, 3.0)]
    assert len(region_boxes(m, 0.25)) == 3
    assert box_overlap((4, 4, 8, 8), (4, 4, 8, 16)) == pytest.approx((0.5, 1.0))
    assert box_overlap((0, 0, 4, 4), (2, 2, 4, 4)) == pytest.approx((4 / 28, 4 / 16))
    assert box_overlap((0, 0, 2, 2), (5, 5, 2, 2)) == (0.0, 0.0)
    boxes = pd.DataFrame({"map_index": [0, 0, 0], "label": ["A", "A", "B"],
                          "x": [4, 24, 0], "y": [4, 24, 28], "w": [8, 4, 3], "h": [16, 4, 3]})
    scores = localisation_scores(m[None], boxes, method="m", tolerance=0)
    np.testing.assert_allclose(scores["iou"], [0.5, 6 / 16, 0.0])
    np.testing.assert_allclose(scores["iobb"], [1.0, 1.0, 0.0])
    assert scores["pointing_hit"].tolist() == [True, False, False]
    summary = summarise_localisation(scores)
    a = summary[(summary.label == "A")].iloc[0]
    assert a["boxes"] == 2 and a["pointing"] == 0.5 and a["mean_iou"] == pytest.approx(
        (0.5 + 6 / 16) / 2)
    assert a["iou>0.3"] == 1.0 and a["iou>0.4"] == 0.5 and a["iou>0.5"] == 0.0   # strict >
    assert a["iobb>0.7"] == 1.0
    everything = summary[summary.label == "all"].iloc[0]
    assert everything["boxes"] == 3 and everything["iobb>0.7"] == pytest.approx(2 / 3)


def test_centre_baseline_is_a_centred_gaussian():
    maps = centre_baseline_maps(2, 32)
    assert maps.shape == (2, 32, 32) and maps.max() == pytest.approx(1.0)
    np.testing.assert_allclose(maps[0], maps[0][::-1], atol=1e-7)   # symmetric about centre
    np.testing.assert_allclose(maps[0], maps[0].T, atol=1e-7)
    d = (0.5 - 16) / 8                                    # corner pixel, sigma = 32 / 4
    assert maps[0, 0, 0] == pytest.approx(np.exp(-d * d) / np.exp(-(0.5 / 8) ** 2), rel=1e-5)
    centre_box = pd.DataFrame({"map_index": [0, 1], "x": [12, 0], "y": [12, 0],
                               "w": [8, 6], "h": [8, 6]})
    scores = localisation_scores(maps, centre_box, method="centre")
    assert scores["pointing_hit"].tolist() == [True, False]
    # Separable Gaussian: energy = (1-D share of the box's pixel columns) squared.
    g = np.exp(-0.5 * ((np.arange(32) + 0.5 - 16) / 8) ** 2)
    np.testing.assert_allclose(scores["energy"], [(g[12:20].sum() / g.sum()) ** 2,
                                                  (g[0:6].sum() / g.sum()) ** 2], rtol=1e-5)


def test_bad_boxes_are_data_errors():
    maps = np.zeros((1, 8, 8))
    with pytest.raises(DataError, match=r"lacks column\(s\) \['map_index'\]"):
        localisation_scores(maps, pd.DataFrame({"x": [0], "y": [0], "w": [1], "h": [1]}))
    with pytest.raises(DataError, match="map_index 3, but only 1 maps"):
        localisation_scores(maps, pd.DataFrame({"map_index": [3], "x": [0], "y": [0],
                                                "w": [1], "h": [1]}))
    with pytest.raises(DataError, match="box row 0 has a non-positive width"):
        localisation_scores(maps, pd.DataFrame({"map_index": [0], "x": [0], "y": [0],
                                                "w": [0], "h": [1]}))


def test_scale_boxes_to_model_input(tmp_path):
    path = tmp_path / "wide.png"
    cv2.imwrite(str(path), np.zeros((50, 200), np.uint8))   # W 200, H 50 on disk
    boxes = pd.DataFrame({"path": [str(path)], "x": [100.0], "y": [10.0], "w": [50.0],
                          "h": [25.0]})
    scaled = scale_boxes(boxes, 100)
    assert scaled[["x", "y", "w", "h"]].iloc[0].tolist() == [50.0, 20.0, 25.0, 50.0]
    given = boxes.assign(width=1000, height=1000)
    assert scale_boxes(given, 100)[["x", "w"]].iloc[0].tolist() == [10.0, 5.0]


def test_tables_written_as_csv_and_markdown(tmp_path):
    m = np.zeros((1, 16, 16))
    m[0, 2:6, 2:6] = 1
    boxes = pd.DataFrame({"map_index": [0], "label": ["Mass"], "x": [2], "y": [2],
                          "w": [4], "h": [4]})
    per_box = localisation_scores(m, boxes, method="cam")
    summary, paths = write_localisation_tables(per_box, tmp_path)
    assert summary.iloc[0]["mean_iou"] == 1.0 and summary.iloc[0]["energy"] == 1.0
    assert pd.read_csv(paths["summary_csv"])["pointing"].tolist() == [1.0, 1.0]
    text = open(paths["summary_md"]).read()
    assert "| cam | Mass | 1 | 1.000 |" in text and "iobb>0.7" in text
