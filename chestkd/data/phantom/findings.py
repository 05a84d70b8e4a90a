"""The 14 findings of the phantom: each edits a :class:`~chestkd.data.phantom.anatomy.Scene`.

Every finding has its own signature at an anatomically plausible place, varies in size,
position and strength (some are subtle), and returns its bounding box in normalised
coordinates ``(x0, y0, x1, y1)``. Findings that change the anatomy itself (cardiomegaly,
emphysema) act on the :class:`Anatomy` before the scene is built (see ``ANATOMY_EDITS``).

| finding | signature |
|---|---|
| Atelectasis | plate-like oblique band in a lower zone, or a wedge pointing at the hilum |
| Cardiomegaly | enlarged cardiac silhouette (cardiothoracic ratio > 0.5) |
| Effusion | fluid at one or both costophrenic angles: blunting, meniscus rising laterally |
| Infiltration | hazy, ill-defined patchy opacity in a mid/lower zone |
| Mass | round opacity, 3-6 % of the image wide, lobulated |
| Nodule | small round opacity, 1-2 % of the image wide, well defined |
| Pneumonia | lobar opacity, sharp along a fissure, with dark branching air bronchograms |
| Pneumothorax | apical/lateral lucent rim without vessel markings, thin pleural line |
| Consolidation | dense homogeneous opacity with fairly sharp borders, no bronchograms |
| Edema | bilateral perihilar haze ("bat wing") and Kerley B lines at the bases |
| Emphysema | hyperlucent lungs, sparse markings, low flat diaphragm, apical bullae |
| Fibrosis | reticular lines and honeycomb rings at the bases and periphery |
| Pleural_Thickening | smooth pleural rim along the lateral chest wall, or an apical cap |
| Hernia | retrocardiac soft tissue above the diaphragm, often gas with an air-fluid level |
"""
from __future__ import annotations

import math
from dataclasses import replace

import cv2
import numpy as np

from chestkd.data.phantom.anatomy import Anatomy, Scene, blur, draw_polyline, soft_ellipse

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
    factor = rng.uniform(1.15, 1.5)
    # The left ventricle grows to the patient's left (image right) more than to the right.
    return replace(anatomy, heart_w=anatomy.heart_w * factor,
                   heart_h=anatomy.heart_h * (1 + 0.5 * (factor - 1)),
                   heart_x=anatomy.heart_x + rng.uniform(0.0, 0.025))


def hyperinflate(anatomy: Anatomy, rng) -> Anatomy:
    # Overlaps the normal range (dome 0.06-0.11, costophrenic angle 0.74-0.81): mild
    # emphysema is hard to tell from a deep breath.
    return replace(anatomy, dome=anatomy.dome * rng.uniform(0.3, 0.75),
                   cp_y=min(anatomy.cp_y + rng.uniform(0.01, 0.05), 0.9),
                   air=anatomy.air * rng.uniform(1.0, 1.1))


ANATOMY_EDITS = {"Cardiomegaly": enlarge_heart, "Emphysema": hyperinflate}


# ------------------------------------------------------------------ scene-level findings
def cardiomegaly(scene: Scene, rng) -> Box:
    return _mask_box(scene.heart, 0.5)


def emphysema(scene: Scene, rng) -> Box:
    lung = scene.lung()
    scene.air_gain *= 1.0 + rng.uniform(0.03, 0.15) * lung
    scene.marking_gain *= 1.0 - rng.uniform(0.3, 0.7) * lung
    for _ in range(int(rng.integers(0, 3))):  # apical bullae: lucent, with a thin wall
        centre = scene.lung_point(rng, _side(rng), rel_y=(0.05, 0.35), margin=0.03)
        radius = rng.uniform(0.015, 0.03)
        inside = soft_ellipse(scene.size, centre, (radius, radius), 0.0, 0.05)
        wall = soft_ellipse(scene.size, centre, (radius * 1.15, radius * 1.15), 0.0, 0.03)
        scene.marking_gain *= 1.0 - inside
        scene.opacity += (0.12 * (wall - inside) - 0.06 * inside) * lung
    return _mask_box(lung, 0.5)


def atelectasis(scene: Scene, rng) -> Box:
    side = _side(rng)
    if rng.random() < 0.6:   # plate-like (discoid) band, obliquely oriented
        cx, cy = scene.lung_point(rng, side, rel_x=(0.25, 0.7), rel_y=(0.55, 0.85))
        length, width = rng.uniform(0.06, 0.11), rng.uniform(0.008, 0.02)
        band = soft_ellipse(scene.size, (cx, cy), (length, width), rng.uniform(-25, 25), 0.2)
        return _add(scene, band * scene.lungs[side], rng.uniform(0.25, 0.45))
    # Wedge: base on the pleura, apex pointing at the hilum (a collapsed segment).
    base = np.array(scene.to_frame(side, rng.uniform(0.05, 0.25), rng.uniform(0.55, 0.9)))
    hilum = np.array(scene.to_frame(side, 0.9, 0.45))
    along = hilum - base
    apex = base + rng.uniform(0.45, 0.7) * along
    normal = np.array([-along[1], along[0]]) / np.linalg.norm(along) * rng.uniform(0.03, 0.06)
    wedge = np.zeros((scene.size, scene.size), np.float32)
    fixed = np.round(np.array([apex, base + normal, base - normal]) * scene.size * 16 - 8)
    cv2.fillPoly(wedge, [fixed.astype(np.int32)], 1.0, cv2.LINE_AA, 4)
    return _add(scene, blur(wedge, 0.006) * scene.lungs[side], rng.uniform(0.2, 0.4))


def effusion(scene: Scene, rng) -> Box:
    sides = ("right", "left") if rng.random() < 0.25 else (_side(rng),)
    x, y = np.meshgrid(*(2 * [(np.arange(scene.size) + 0.5) / scene.size]))
    footprint = np.zeros_like(scene.opacity)
    for side in sides:
        lateral, medial, top, bottom = scene.lung_frame(side)
        depth = rng.uniform(0.03, 0.12)   # from a blunted angle to a large effusion
        towards_wall = np.clip((x - medial) / (lateral - medial), 0.0, 1.0)
        # Meniscus: the fluid level rises towards the lateral wall.
        level = bottom - depth * (0.5 + 0.9 * towards_wall ** 2)
        fluid = scene.lungs[side] * blur((y > level).astype(np.float32), 0.006)
        scene.air_gain *= 1.0 - rng.uniform(0.3, 0.7) * fluid
        scene.opacity += rng.uniform(0.08, 0.3) * fluid
        footprint += fluid
    return _mask_box(footprint)


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
    """Lobar: one edge follows a fissure (sharp), the others fade; air bronchograms inside."""
    side = _side(rng)
    lateral, medial, top, bottom = scene.lung_frame(side)
    x, y = np.meshgrid(*(2 * [(np.arange(scene.size) + 0.5) / scene.size]))
    fissure = top + rng.uniform(0.38, 0.5) * (bottom - top)
    upper_lobe = rng.random() < 0.35
    # Logistic step across the fissure, ~1 pixel wide: the lobe's sharp border.
    step = np.clip((fissure - y if upper_lobe else y - fissure) * scene.size / 0.8, -30, 30)
    lobe = 1.0 / (1.0 + np.exp(-step))
    centre = scene.to_frame(side, rng.uniform(0.3, 0.7),
                            rng.uniform(0.15, 0.35) if upper_lobe else rng.uniform(0.6, 0.8))
    extent = soft_ellipse(scene.size, centre, (rng.uniform(0.07, 0.12), rng.uniform(0.08, 0.14)),
                          0.0, 0.3)
    region = (lobe * extent * scene.lungs[side]).astype(np.float32)
    bronchi = np.zeros_like(region)
    hilum = np.array(scene.to_frame(side, 0.95, 0.45), np.float32)
    heading = math.atan2(centre[1] - hilum[1], centre[0] - hilum[0])
    for _ in range(int(rng.integers(3, 7))):  # dark branching tubes: air bronchograms
        point, angle, width = hilum.copy(), heading + rng.normal(0, 0.5), 0.008
        for _ in range(4):
            step_to = point + rng.uniform(0.03, 0.05) * np.array(
                [math.cos(angle), math.sin(angle)], np.float32)
            draw_polyline(bronchi, np.stack([point, step_to]), width)
            point, angle, width = step_to, angle + rng.normal(0, 0.35), width * 0.8
    strength = rng.uniform(0.3, 0.7)
    scene.air_gain *= 1.0 - strength * region * (1.0 - 0.8 * blur(bronchi, 0.002))
    return _add(scene, region - 0.6 * blur(bronchi, 0.002) * region, 0.5 * strength)


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
    spread = rng.uniform(0.8, 1.2)   # from a mild perihilar cuff to wide bat wings
    for sign in (-1.0, 1.0):
        centre = (a.midline + sign * rng.uniform(0.1, 0.15), a.heart_y - rng.uniform(0.06, 0.14))
        haze += soft_ellipse(scene.size, centre, (0.09 * spread, 0.13 * spread),
                             sign * rng.uniform(5, 30), 0.35)
    haze = np.clip(haze, 0, 1) * scene.lung()
    lines = np.zeros_like(haze)
    for side in ("right", "left"):
        lateral, _, top, bottom = scene.lung_frame(side)
        inwards = 1.0 if side == "right" else -1.0
        for _ in range(int(rng.integers(0, 6))):  # Kerley B: short horizontal lines
            yk = bottom - rng.uniform(0.02, 0.12)
            length = rng.uniform(0.015, 0.035)
            draw_polyline(lines, np.array([[lateral, yk], [lateral + inwards * length, yk]],
                                          np.float32), 0.003)
    lines *= scene.lung()
    return _add(scene, blur(haze, 0.01) + 0.6 * blur(lines, 0.001), rng.uniform(0.04, 0.18))


def fibrosis(scene: Scene, rng) -> Box:
    lines = np.zeros((scene.size, scene.size), np.float32)
    sides = ("right", "left") if rng.random() < 0.7 else (_side(rng),)
    for side in sides:
        lateral, medial, top, bottom = scene.lung_frame(side)
        for _ in range(int(rng.integers(12, 30))):  # a reticular net: short zig-zag strokes
            point = np.array([lateral + rng.uniform(0.0, 0.45) * (medial - lateral),
                              top + rng.uniform(0.55, 0.95) * (bottom - top)], np.float32)
            for _ in range(3):
                angle = rng.uniform(0, 2 * math.pi)
                nxt = point + rng.uniform(0.01, 0.025) * np.array(
                    [math.cos(angle), math.sin(angle)], np.float32)
                draw_polyline(lines, np.stack([point, nxt]), 0.0025)
                point = nxt
        for _ in range(int(rng.integers(0, 6))):  # honeycombing: small rings at the base
            cx = lateral + rng.uniform(0.0, 0.3) * (medial - lateral)
            cy = top + rng.uniform(0.75, 0.95) * (bottom - top)
            radius = max(1, int(rng.uniform(0.005, 0.01) * scene.size))
            cv2.circle(lines, (int(cx * scene.size), int(cy * scene.size)), radius, 1.0, 1,
                       cv2.LINE_AA)
    lines = blur(lines, 0.001) * scene.lung()
    return _add(scene, lines, rng.uniform(0.2, 0.35))


def pleural_thickening(scene: Scene, rng) -> Box:
    sides = ("right", "left") if rng.random() < 0.2 else (_side(rng),)
    y = ((np.arange(scene.size) + 0.5) / scene.size)[:, None]
    footprint = np.zeros_like(scene.opacity)
    for side in sides:
        lateral, medial, top, bottom = scene.lung_frame(side)
        thickness = rng.uniform(0.008, 0.018)
        if rng.random() < 0.3:   # apical cap
            start, stop = top - 0.01, top + rng.uniform(0.12, 0.22) * (bottom - top)
        else:                    # along the lateral chest wall
            start = top + rng.uniform(0.1, 0.4) * (bottom - top)
            stop = start + rng.uniform(0.2, 0.4) * (bottom - top)
        zone = (y > start) & (y < stop)
        rim = scene.lungs[side] * (scene.wall_distance(side) < thickness) * zone
        rim = blur(rim.astype(np.float32), 0.002)
        scene.air_gain *= 1.0 - 0.6 * rim
        scene.opacity += rng.uniform(0.25, 0.45) * rim
        footprint += rim
    return _mask_box(footprint)


def hernia(scene: Scene, rng) -> Box:
    a = scene.anatomy
    centre = (a.midline + rng.uniform(-0.02, 0.04), a.cp_y - a.dome - rng.uniform(0.0, 0.03))
    radius = rng.uniform(0.04, 0.06)
    sac = soft_ellipse(scene.size, centre, (radius * 1.2, radius), 0.0, 0.1)
    scene.opacity += rng.uniform(0.18, 0.3) * sac
    if rng.random() < 0.7:
        # Gas in the herniated stomach, its lower edge a flat air-fluid level.
        y = ((np.arange(scene.size) + 0.5) / scene.size)[:, None]
        level = centre[1] + rng.uniform(-0.2, 0.3) * radius
        gas = soft_ellipse(scene.size, centre, (radius * 0.8, radius * 0.75), 0.0, 0.08)
        gas = blur(gas * (y < level).astype(np.float32), 0.002)
        scene.opacity -= rng.uniform(0.3, 0.5) * gas
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
