"""The 14 findings of the phantom: each edits a :class:`~chestkd.data.phantom_anatomy.Scene`.

Every finding has its own signature at an anatomically plausible place, varies in size,
position and strength (some are subtle), and returns its bounding box in normalised
coordinates ``(x0, y0, x1, y1)``. Findings that change the anatomy itself (cardiomegaly,
emphysema) act on the :class:`Anatomy` before the scene is built (see ``ANATOMY_EDITS``).

| finding | signature |
|---|---|
| Atelectasis | plate-like band of opacity in a lower zone, obliquely oriented |
| Cardiomegaly | enlarged cardiac silhouette (cardiothoracic ratio > 0.5) |
| Effusion | fluid at a costophrenic angle: blunting with a meniscus rising laterally |
| Infiltration | hazy, ill-defined patchy opacity in a mid/lower zone |
| Mass | round opacity, 3-6 % of the image wide, lobulated |
| Nodule | small round opacity, 1-2 % of the image wide, well defined |
| Pneumonia | lobar dense opacity with dark branching air bronchograms |
| Pneumothorax | apical/lateral lucent rim without vessel markings, thin pleural line |
| Consolidation | dense homogeneous opacity with fairly sharp borders, no bronchograms |
| Edema | bilateral perihilar haze ("bat wing") and Kerley B lines at the bases |
| Emphysema | hyperlucent lungs, sparse markings, low flat diaphragm |
| Fibrosis | reticular lines at the bases and periphery |
| Pleural_Thickening | smooth pleural rim along the upper lateral chest wall |
| Hernia | retrocardiac rounded soft tissue with a gas bubble above the diaphragm |
"""
from __future__ import annotations

import math
from dataclasses import replace

import cv2
import numpy as np

from chestkd.data.phantom_anatomy import Anatomy, Scene, blur, draw_polyline, soft_ellipse

Box = tuple[float, float, float, float]


def _mask_box(mask: np.ndarray, threshold: float = 0.25) -> Box:
    """Normalised bounding box of where ``mask`` exceeds ``threshold`` of its maximum."""
    size = mask.shape[0]
    rows, cols = np.nonzero(mask > threshold * max(float(mask.max()), 1e-6))
    if len(rows) == 0:
        return (0.0, 0.0, 0.0, 0.0)
    return (cols.min() / size, rows.min() / size, (cols.max() + 1) / size, (rows.max() + 1) / size)


def _side(rng) -> str:
    return "right" if rng.random() < 0.5 else "left"


def _add(scene: Scene, mask: np.ndarray, strength: float) -> Box:
    scene.opacity += strength * mask
    return _mask_box(mask)


# ---------------------------------------------------------------- anatomy-level findings
def enlarge_heart(anatomy: Anatomy, rng) -> Anatomy:
    factor = rng.uniform(1.3, 1.6)
    return replace(anatomy, heart_w=anatomy.heart_w * factor,
                   heart_h=anatomy.heart_h * (1 + 0.5 * (factor - 1)))


def hyperinflate(anatomy: Anatomy, rng) -> Anatomy:
    return replace(anatomy, dome=anatomy.dome * rng.uniform(0.3, 0.55),
                   cp_y=min(anatomy.cp_y + rng.uniform(0.03, 0.06), 0.9),
                   air=anatomy.air * rng.uniform(1.12, 1.25))


ANATOMY_EDITS = {"Cardiomegaly": enlarge_heart, "Emphysema": hyperinflate}


# ------------------------------------------------------------------ scene-level findings
def cardiomegaly(scene: Scene, rng) -> Box:
    return _mask_box(scene.heart, 0.5)


def emphysema(scene: Scene, rng) -> Box:
    lung = scene.lung()
    scene.air_gain *= 1.0 + rng.uniform(0.15, 0.3) * lung
    scene.marking_gain *= 1.0 - rng.uniform(0.4, 0.7) * lung
    return _mask_box(lung, 0.5)


def atelectasis(scene: Scene, rng) -> Box:
    side = _side(rng)
    cx, cy = scene.lung_point(rng, side, rel_x=(0.25, 0.7), rel_y=(0.55, 0.85))
    length, width = rng.uniform(0.06, 0.11), rng.uniform(0.008, 0.02)
    band = soft_ellipse(scene.size, (cx, cy), (length, width), rng.uniform(-25, 25), 0.2)
    return _add(scene, band * scene.lungs[side], rng.uniform(0.25, 0.45))


def effusion(scene: Scene, rng) -> Box:
    side = _side(rng)
    lateral, medial, top, bottom = scene.lung_frame(side)
    depth = rng.uniform(0.04, 0.12)
    x, y = np.meshgrid(*(2 * [(np.arange(scene.size) + 0.5) / scene.size]))
    towards_wall = np.clip((x - medial) / (lateral - medial), 0.0, 1.0)
    # Meniscus: the fluid level rises towards the lateral wall.
    level = bottom - depth * (0.5 + 0.9 * towards_wall ** 2)
    fluid = scene.lungs[side] * blur((y > level).astype(np.float32), 0.006)
    scene.air_gain *= 1.0 - rng.uniform(0.3, 0.7) * fluid
    return _add(scene, fluid, rng.uniform(0.08, 0.3))


def _patch(scene: Scene, rng, side, centre, radius, smooth) -> np.ndarray:
    """Irregular patch: thresholded smooth noise inside a soft disc, within the lung."""
    noise = blur(rng.random((scene.size, scene.size)).astype(np.float32), smooth)
    noise = (noise - noise.mean()) / (noise.std() + 1e-6)
    disc = soft_ellipse(scene.size, centre, (radius, radius * rng.uniform(0.7, 1.2)),
                        rng.uniform(0, 180), 0.25)
    return np.clip(disc * (0.6 + 0.5 * noise), 0.0, 1.0) * scene.lungs[side]


def infiltration(scene: Scene, rng) -> Box:
    side = _side(rng)
    centre = scene.lung_point(rng, side, rel_y=(0.35, 0.8))
    patch = blur(_patch(scene, rng, side, centre, rng.uniform(0.06, 0.1), 0.015), 0.01)
    return _add(scene, patch, rng.uniform(0.12, 0.22))


def consolidation(scene: Scene, rng) -> Box:
    side = _side(rng)
    centre = scene.lung_point(rng, side, rel_y=(0.3, 0.75))
    patch = _patch(scene, rng, side, centre, rng.uniform(0.04, 0.07), 0.03)
    mask = blur((patch > 0.5 * patch.max()).astype(np.float32), 0.004) * scene.lungs[side]
    scene.air_gain *= 1.0 - 0.5 * mask
    return _add(scene, mask, rng.uniform(0.15, 0.35))


def pneumonia(scene: Scene, rng) -> Box:
    side = _side(rng)
    lateral, medial, top, bottom = scene.lung_frame(side)
    lower = rng.random() < 0.7
    y0 = top + (0.55 if lower else 0.2) * (bottom - top)
    centre = ((lateral + medial) / 2, y0 + 0.1 * (bottom - top))
    region = _patch(scene, rng, side, centre, rng.uniform(0.07, 0.1), 0.02)
    region = blur((region > 0.4 * region.max()).astype(np.float32), 0.008) * scene.lungs[side]
    bronchi = np.zeros_like(region)
    for _ in range(4):  # air bronchograms: dark branching tubes inside the opacity
        angle = rng.uniform(0, 2 * math.pi)
        start = np.array(centre, np.float32)
        end = start + 0.07 * np.array([math.cos(angle), math.sin(angle)], np.float32)
        draw_polyline(bronchi, np.stack([start, end]), 0.006)
    scene.air_gain *= 1.0 - 0.7 * region
    return _add(scene, region - 0.35 * blur(bronchi, 0.002) * region, rng.uniform(0.4, 0.6))


def mass(scene: Scene, rng) -> Box:
    side = _side(rng)
    centre = scene.lung_point(rng, side, rel_y=(0.15, 0.8), margin=0.04)
    radius = rng.uniform(0.03, 0.06)
    lobes = sum(soft_ellipse(scene.size, (centre[0] + radius * 0.4 * math.cos(a),
                                          centre[1] + radius * 0.4 * math.sin(a)),
                             (radius * 0.7, radius * 0.7), 0.0, 0.08)
                for a in rng.uniform(0, 2 * math.pi, 3))
    return _add(scene, np.clip(lobes, 0, 1) * scene.lungs[side], rng.uniform(0.3, 0.5))


def nodule(scene: Scene, rng) -> Box:
    side = _side(rng)
    centre = scene.lung_point(rng, side, margin=0.02)
    radius = rng.uniform(0.006, 0.012)
    spot = soft_ellipse(scene.size, centre, (radius, radius * rng.uniform(0.85, 1.1)),
                        0.0, 0.12)
    scene.opacity += rng.uniform(0.3, 0.55) * spot
    # Boxes of tiny lesions are drawn with some margin, as radiologists do.
    pad = 0.015
    return (centre[0] - radius - pad, centre[1] - radius - pad,
            centre[0] + radius + pad, centre[1] + radius + pad)


def pneumothorax(scene: Scene, rng) -> Box:
    side = _side(rng)
    lateral, medial, top, bottom = scene.lung_frame(side)
    rim = rng.uniform(0.02, 0.05)
    x, y = np.meshgrid(*(2 * [(np.arange(scene.size) + 0.5) / scene.size]))
    upper = np.clip((top + 0.55 * (bottom - top) - y) / 0.1, 0.0, 1.0)
    gap = scene.lungs[side] * (scene.wall_distance(side) < rim) * upper
    gap = blur(gap.astype(np.float32), 0.003)
    scene.marking_gain *= 1.0 - gap
    scene.air_gain *= 1.0 + 0.35 * gap
    edge = scene.lungs[side] * (np.abs(scene.wall_distance(side) - rim) < 1.2 / scene.size) * upper
    scene.opacity += 0.12 * blur(edge.astype(np.float32), 0.001)  # the visceral pleural line
    return _mask_box(gap)


def edema(scene: Scene, rng) -> Box:
    a = scene.anatomy
    haze = np.zeros((scene.size, scene.size), np.float32)
    for sign in (-1.0, 1.0):
        haze += soft_ellipse(scene.size, (a.midline + sign * 0.12, a.heart_y - 0.1),
                             (0.1, 0.14), sign * 20.0, 0.35)
    haze = np.clip(haze, 0, 1) * scene.lung()
    lines = np.zeros_like(haze)
    for side in ("right", "left"):
        lateral, _, top, bottom = scene.lung_frame(side)
        inwards = 1.0 if side == "right" else -1.0
        for k in range(int(rng.integers(3, 7))):  # Kerley B: short horizontal lines
            yk = bottom - 0.03 - 0.02 * k
            draw_polyline(lines, np.array([[lateral, yk], [lateral + inwards * 0.03, yk]],
                                          np.float32), 0.003)
    lines *= scene.lung()
    return _add(scene, blur(haze, 0.01) + 0.6 * blur(lines, 0.001), rng.uniform(0.15, 0.25))


def fibrosis(scene: Scene, rng) -> Box:
    lines = np.zeros((scene.size, scene.size), np.float32)
    sides = ("right", "left") if rng.random() < 0.7 else (_side(rng),)
    for side in sides:
        lateral, medial, top, bottom = scene.lung_frame(side)
        for _ in range(25):  # a reticular net of short random strokes near the base/wall
            x0 = lateral + rng.uniform(0.0, 0.45) * (medial - lateral)
            y0 = top + rng.uniform(0.55, 0.95) * (bottom - top)
            angle = rng.uniform(0, 2 * math.pi)
            x1, y1 = x0 + 0.025 * math.cos(angle), y0 + 0.025 * math.sin(angle)
            draw_polyline(lines, np.array([[x0, y0], [x1, y1]], np.float32), 0.0025)
    lines = blur(lines, 0.001) * scene.lung()
    return _add(scene, lines, rng.uniform(0.2, 0.35))


def pleural_thickening(scene: Scene, rng) -> Box:
    side = _side(rng)
    lateral, medial, top, bottom = scene.lung_frame(side)
    thickness = rng.uniform(0.008, 0.018)
    y = (np.arange(scene.size) + 0.5) / scene.size
    zone = ((y > top + 0.1 * (bottom - top)) & (y < top + rng.uniform(0.45, 0.7)
                                                  * (bottom - top)))[:, None]
    rim = scene.lungs[side] * (scene.wall_distance(side) < thickness) * zone
    rim = blur(rim.astype(np.float32), 0.002)
    scene.air_gain *= 1.0 - 0.6 * rim
    return _add(scene, rim, rng.uniform(0.25, 0.45))


def hernia(scene: Scene, rng) -> Box:
    a = scene.anatomy
    centre = (a.midline + rng.uniform(-0.02, 0.04), a.cp_y - a.dome - rng.uniform(0.0, 0.03))
    radius = rng.uniform(0.04, 0.06)
    sac = soft_ellipse(scene.size, centre, (radius * 1.2, radius), 0.0, 0.1)
    gas = soft_ellipse(scene.size, (centre[0], centre[1] - 0.3 * radius),
                       (radius * 0.7, radius * 0.4), 0.0, 0.1)
    scene.opacity += 0.25 * sac - 0.45 * gas
    return _mask_box(sac)


SCENE_EDITS = {
    "Atelectasis": atelectasis, "Cardiomegaly": cardiomegaly, "Effusion": effusion,
    "Infiltration": infiltration, "Mass": mass, "Nodule": nodule, "Pneumonia": pneumonia,
    "Pneumothorax": pneumothorax, "Consolidation": consolidation, "Edema": edema,
    "Emphysema": emphysema, "Fibrosis": fibrosis, "Pleural_Thickening": pleural_thickening,
    "Hernia": hernia,
}


def transform_box(box: Box, matrix: np.ndarray) -> Box:
    """The axis-aligned box of ``box`` after a 2x3 affine map in normalised coordinates."""
    x0, y0, x1, y1 = box
    corners = np.array([[x0, y0, 1], [x1, y0, 1], [x0, y1, 1], [x1, y1, 1]], np.float64)
    moved = corners @ matrix.T
    lo, hi = moved.min(0), moved.max(0)
    return (float(np.clip(lo[0], 0, 1)), float(np.clip(lo[1], 0, 1)),
            float(np.clip(hi[0], 0, 1)), float(np.clip(hi[1], 0, 1)))


def warp(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a normalised-coordinate affine map to an image (border replicated)."""
    size = image.shape[0]
    pixels = matrix.copy()
    pixels[:, 2] *= size
    return cv2.warpAffine(image, pixels, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
