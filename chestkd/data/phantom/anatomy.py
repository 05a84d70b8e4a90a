"""Normal anatomy of the phantom: a procedural frontal chest radiograph.

Everything is built in *normalised* coordinates (x, y in [0, 1], x to the image's right, y
down), so one seed gives the same chest at every image size. The image is a projection of
X-ray attenuation: the renderer accumulates a *density* map ``D`` (soft tissue ~1, aerated
lung ~0.4, bone adds on top) and :func:`chestkd.data.phantom.multilabel.expose` maps it to
intensity with the Beer-Lambert law ``I = 1 - exp(-k D)``, so dense structures are white and
lungs dark.

Laterality follows the radiological convention of a PA film: the patient's **right** lung
is on the image's **left** (x < midline), the heart bulges to the image's right.

Pieces, in the order they are drawn:

* body: an elliptic cylinder, whose projected thickness ``sqrt(1 - (dx / half_width)^2)``
  fades towards the skin line; neck and shoulders at the top;
* lungs: two polygons (rounded apex, lateral wall, sharp costophrenic angle, domed
  hemidiaphragm, medial border), whose air lowers the density, more so in the middle;
* heart: an ellipse pair (right atrium and ventricles) that displaces lung air, so its
  silhouette appears between the lungs; mediastinum, aortic knob and trachea above it;
* vessel markings: a branching tree from each hilum, fading to the periphery;
* bones: spine, posterior ribs with bright cortices, clavicles, scapular borders in AP views;
* optional gastric bubble under the left hemidiaphragm and breast shadows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import cv2
import numpy as np

SIDES = ("right", "left")  # patient's right lung = image left
_SHIFT = 4  # cv2 fixed-point bits: polygons are placed with 1/16 pixel precision


@dataclass(frozen=True)
class Anatomy:
    """One patient's chest, in normalised coordinates (lengths are fractions of the image)."""

    midline: float          # x of the spine
    half_width: float       # lateral lung border's distance from the midline, at its widest
    apex_y: float           # top of the lung apices
    cp_y: float             # right costophrenic angle (lowest point of the right lung)
    left_drop: float        # the left hemidiaphragm lies this much lower than the right
    dome: float             # height of the diaphragm domes above the costophrenic angles
    heart_x: float          # heart centre, to the patient's left of the midline
    heart_y: float          # heart centre height
    heart_w: float          # heart half width (cardiothoracic ratio = heart_w / half_width)
    heart_h: float          # heart half height
    body_half_width: float  # skin line's distance from the midline
    air: float              # density removed by fully aerated lung (higher = darker lungs)
    markings: float         # strength of the vessel markings
    rib_start: float        # height of the first posterior rib at the spine
    rib_gap: float          # vertical spacing of the posterior ribs
    female: bool
    gastric_bubble: bool
    seed: int               # vessel tree, and the placement of this patient's lesions


def sample_anatomy(rng: np.random.Generator, female: bool | None = None) -> Anatomy:
    """A random patient. Always draws the same number of values from ``rng``."""
    u = rng.random(18)
    half_width = 0.33 + 0.06 * u[1]
    return Anatomy(
        midline=0.49 + 0.02 * u[0],
        half_width=half_width,
        apex_y=0.09 + 0.05 * u[2],
        cp_y=0.74 + 0.07 * u[3],
        left_drop=0.005 + 0.03 * u[4],
        dome=0.06 + 0.05 * u[5],
        heart_x=0.035 + 0.025 * u[6],
        heart_y=0.61 + 0.04 * u[7],
        # Normal cardiothoracic ratio ~0.38-0.48.
        heart_w=half_width * (0.38 + 0.10 * u[8]),
        heart_h=0.11 + 0.03 * u[9],
        body_half_width=half_width + 0.08 + 0.06 * u[10],
        air=0.50 + 0.12 * u[11],
        markings=0.07 + 0.06 * u[12],
        rib_start=0.10 + 0.03 * u[13],
        rib_gap=0.058 + 0.01 * u[14],
        female=bool(u[15] < 0.44) if female is None else bool(female),
        gastric_bubble=bool(u[16] < 0.7),
        seed=int(rng.integers(0, 2 ** 31 - 1)),
    )


def adjust_for_view(anatomy: Anatomy, view: str, inspiration: float) -> Anatomy:
    """Per-film changes: an AP film magnifies the heart and is taken in shallower inspiration."""
    heart_scale, cp_shift = (1.1, -0.025) if view == "AP" else (1.0, 0.0)
    return replace(anatomy, heart_w=anatomy.heart_w * heart_scale,
                   heart_h=anatomy.heart_h * heart_scale,
                   cp_y=anatomy.cp_y + cp_shift + inspiration)


@lru_cache(maxsize=4)
def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised coordinates of the pixel centres, as (x, y) arrays of shape (size, size)."""
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size
    x, y = np.meshgrid(axis, axis)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def fill_polygon(points: np.ndarray, size: int) -> np.ndarray:
    """Anti-aliased filled polygon (normalised (K, 2) points) as a float32 mask in [0, 1]."""
    canvas = np.zeros((size, size), np.uint8)
    fixed = np.round(points * size * (1 << _SHIFT) - 0.5 * (1 << _SHIFT)).astype(np.int32)
    cv2.fillPoly(canvas, [fixed], 255, cv2.LINE_AA, _SHIFT)
    return canvas.astype(np.float32) / 255.0


def blur(image: np.ndarray, sigma_norm: float) -> np.ndarray:
    """Gaussian blur with a sigma given as a fraction of the image size."""
    sigma = sigma_norm * image.shape[0]
    if sigma < 0.3:
        return image
    return cv2.GaussianBlur(image, (0, 0), sigma)


def draw_polyline(canvas: np.ndarray, points: np.ndarray, thickness_norm: float,
                  value: float = 1.0) -> None:
    """Draw an open polyline (normalised points) in place; thickness at least one pixel."""
    size = canvas.shape[0]
    fixed = np.round(points * size * (1 << _SHIFT) - 0.5 * (1 << _SHIFT)).astype(np.int32)
    thickness = max(1, int(round(thickness_norm * size)))
    cv2.polylines(canvas, [fixed], False, float(value), thickness, cv2.LINE_AA, _SHIFT)


def soft_ellipse(size: int, center, axes, angle_deg: float = 0.0,
                 softness: float = 0.1) -> np.ndarray:
    """Ellipse mask with a logistic edge: ``1 / (1 + exp((r - 1) / softness))``.

    ``r`` is the elliptic radius (1 on the outline); only a window around the ellipse is
    computed, so small lesions are cheap at any image size.
    """
    x, y = pixel_grid(size)
    reach = max(axes) * (1.0 + 6.0 * softness) + 1.5 / size
    cols = slice(max(0, int((center[0] - reach) * size)),
                 min(size, int((center[0] + reach) * size) + 1))
    rows = slice(max(0, int((center[1] - reach) * size)),
                 min(size, int((center[1] + reach) * size) + 1))
    mask = np.zeros((size, size), np.float32)
    if cols.start >= cols.stop or rows.start >= rows.stop:
        return mask
    angle = math.radians(angle_deg)
    dx = x[rows, cols] - center[0]
    dy = y[rows, cols] - center[1]
    along = (dx * math.cos(angle) + dy * math.sin(angle)) / max(axes[0], 1e-6)
    across = (-dx * math.sin(angle) + dy * math.cos(angle)) / max(axes[1], 1e-6)
    # A lower bound on the edge width keeps pixel-sized lesions anti-aliased, not aliased.
    edge = max(softness, 0.7 / (size * min(axes)))
    radius = np.sqrt(along * along + across * across)
    mask[rows, cols] = 1.0 / (1.0 + np.exp(np.clip((radius - 1.0) / edge, -30, 30)))
    return mask


def lung_polygon(anatomy: Anatomy, side: str, samples: int = 24) -> np.ndarray:
    """Outline of one lung as normalised (K, 2) points, clockwise from the apex."""
    sign = -1.0 if side == "right" else 1.0
    mid = anatomy.midline
    cp_y = anatomy.cp_y + (anatomy.left_drop if side == "left" else 0.0)
    lateral = mid + sign * anatomy.half_width
    medial_top = mid + sign * 0.055
    medial_low = mid + sign * 0.035
    apex_x = mid + sign * 0.42 * anatomy.half_width
    widest_y = anatomy.apex_y + 0.55 * (cp_y - anatomy.apex_y)
    t = np.linspace(0.0, 1.0, samples)
    # Apex to widest point: a quarter ellipse.
    upper = np.stack([apex_x + (lateral - apex_x) * np.sin(t * np.pi / 2),
                      widest_y - (widest_y - anatomy.apex_y) * np.cos(t * np.pi / 2)], 1)
    # Widest point down to the costophrenic angle, tucking slightly inwards.
    wall = np.stack([lateral - sign * 0.012 * t ** 2, widest_y + (cp_y - widest_y) * t], 1)
    # Diaphragm dome from the costophrenic angle (u = 0) to the cardiophrenic angle (u = 1).
    u = t[1:]
    dome_x = (lateral - sign * 0.012) + (medial_low - lateral + sign * 0.012) * u
    dome_y = cp_y - anatomy.dome * np.sin(np.pi * np.minimum(u / 1.3, 1.0)) ** 0.8 - 0.01 * u
    diaphragm = np.stack([dome_x, dome_y], 1)
    # Medial border up to the apex.
    v = t[1:-1]
    medial = np.stack([medial_low + (medial_top - medial_low) * v,
                       dome_y[-1] + (anatomy.apex_y + 0.06 - dome_y[-1]) * v], 1)
    cap = np.stack([medial_top + (apex_x - medial_top) * np.sin(v * np.pi / 2),
                    anatomy.apex_y + 0.06 * np.cos(v * np.pi / 2)], 1)
    return np.concatenate([upper, wall[1:], diaphragm, medial, cap]).astype(np.float32)


def heart_mask(anatomy: Anatomy, size: int) -> np.ndarray:
    """Soft mask of the cardiac silhouette (ventricles plus right atrium)."""
    mid = anatomy.midline
    ventricles = soft_ellipse(size, (mid + anatomy.heart_x, anatomy.heart_y),
                              (anatomy.heart_w, anatomy.heart_h), -28.0, 0.04)
    atrium = soft_ellipse(size, (mid - 0.35 * anatomy.heart_w, anatomy.heart_y - 0.01),
                          (0.45 * anatomy.heart_w, 0.8 * anatomy.heart_h), 0.0, 0.05)
    return np.maximum(ventricles, atrium)


def vessel_segments(anatomy: Anatomy, side: str) -> list[tuple]:
    """Vessel tree of one lung: segments (x0, y0, x1, y1, width, strength), normalised."""
    rng = np.random.default_rng([anatomy.seed, SIDES.index(side), 99])
    sign = -1.0 if side == "right" else 1.0
    hilum = (anatomy.midline + sign * 0.09, anatomy.heart_y - 0.17)
    segments = []
    stack = []
    for base_angle in (-130.0, -100.0, -60.0, -20.0, 15.0, 50.0, 80.0):
        angle = base_angle + rng.uniform(-12, 12)
        stack.append((hilum[0], hilum[1], angle, 0.075 + 0.03 * rng.random(), 0.012, 1.0, 0))
    while stack:
        x, y, angle, length, width, strength, depth = stack.pop()
        rad = math.radians(angle)
        # Angles measured from "outwards": mirror them for the image-left lung.
        x1 = x + sign * length * math.cos(rad) * 0.9 + sign * 0.2 * length
        y1 = y + length * math.sin(rad)
        segments.append((x, y, x1, y1, width, strength))
        if depth < 3:
            for turn in (-1.0, 1.0):
                stack.append((x1, y1, angle + turn * rng.uniform(15, 35),
                               length * rng.uniform(0.6, 0.8), width * 0.65,
                               strength * 0.75, depth + 1))
    return segments


def rib_curves(anatomy: Anatomy, side: str, count: int = 10) -> list[np.ndarray]:
    """Posterior ribs of one side as normalised polylines, from the spine outwards."""
    sign = -1.0 if side == "right" else 1.0
    t = np.linspace(0.0, 1.0, 16)
    curves = []
    for k in range(count):
        y0 = anatomy.rib_start + k * anatomy.rib_gap * (1.0 + 0.04 * k)
        reach = anatomy.half_width + 0.03
        # Rises gently beside the spine, then sweeps down along the lateral wall.
        x = anatomy.midline + sign * (0.035 + reach * np.sin(t * np.pi / 2) ** 0.9)
        y = y0 - 0.025 * np.sin(np.pi * t) + (0.05 + 0.01 * k) * t ** 3
        curves.append(np.stack([x, y], 1).astype(np.float32))
    return curves


def clavicle_curve(anatomy: Anatomy, side: str, view: str) -> np.ndarray:
    """One clavicle, from the sternal end to the shoulder (higher and flatter on AP films)."""
    sign = -1.0 if side == "right" else 1.0
    t = np.linspace(0.0, 1.0, 12)
    lift = 0.03 if view == "AP" else 0.0
    x = anatomy.midline + sign * (0.04 + 0.32 * t)
    y = anatomy.apex_y + 0.05 - lift - 0.06 * t + 0.015 * np.sin(2 * np.pi * t)
    return np.stack([x, y], 1).astype(np.float32)


class Scene:
    """The layers of one film, which findings edit before :meth:`density` composes them.

    Attributes:
        lungs: side -> soft lung mask; ``polygons``: side -> normalised outline.
        heart: soft cardiac silhouette mask.
        air_gain: per-pixel multiplier of lung air (> 1 hyperlucent, e.g. emphysema).
        marking_gain: per-pixel multiplier of vessel markings (0 where a pneumothorax is).
        opacity: density added by findings (negative for gas).
    """

    def __init__(self, anatomy: Anatomy, size: int, view: str = "PA"):
        self.anatomy, self.size, self.view = anatomy, size, view
        self.polygons = {side: lung_polygon(anatomy, side) for side in SIDES}
        self.lungs = {side: fill_polygon(self.polygons[side], size) for side in SIDES}
        self.heart = heart_mask(anatomy, size)
        self.air_gain = np.ones((size, size), np.float32)
        self.marking_gain = np.ones((size, size), np.float32)
        self.opacity = np.zeros((size, size), np.float32)
        self._wall_distance = {}

    def lung(self) -> np.ndarray:
        """Both lungs' mask."""
        return np.maximum(self.lungs["right"], self.lungs["left"])

    def wall_distance(self, side: str) -> np.ndarray:
        """Normalised distance from each pixel inside a lung to that lung's outline (0 outside)."""
        if side not in self._wall_distance:
            inside = (self.lungs[side] > 0.5).astype(np.uint8)
            distance = cv2.distanceTransform(inside, cv2.DIST_L2, 5) / self.size
            self._wall_distance[side] = distance.astype(np.float32)
        return self._wall_distance[side]

    def lung_frame(self, side: str) -> tuple[float, float, float, float]:
        """(lateral x, medial x, top y, bottom y) of one lung's outline."""
        poly = self.polygons[side]
        xs, ys = poly[:, 0], poly[:, 1]
        lateral, medial = (xs.min(), xs.max()) if side == "right" else (xs.max(), xs.min())
        return float(lateral), float(medial), float(ys.min()), float(ys.max())

    def to_frame(self, side: str, rel_x: float, rel_y: float) -> tuple[float, float]:
        """Normalised point from lung-relative coordinates (rel_x 0 = lateral wall, 1 = medial)."""
        lateral, medial, top, bottom = self.lung_frame(side)
        return lateral + rel_x * (medial - lateral), top + rel_y * (bottom - top)

    def lung_point(self, rng: np.random.Generator, side: str, rel_x=(0.1, 0.9),
                   rel_y=(0.1, 0.9), margin: float = 0.01) -> tuple[float, float]:
        """A random point inside a lung, at least ``margin`` inside its outline.

        Always draws 2 x 32 values, then takes the first that lies inside (the lung centre
        if none does), so the caller's random stream does not depend on the lung's shape.
        """
        contour = self.polygons[side].reshape(-1, 1, 2)
        candidates = np.stack([rng.uniform(*rel_x, 32), rng.uniform(*rel_y, 32)], 1)
        for rx, ry in candidates:
            point = self.to_frame(side, rx, ry)
            if cv2.pointPolygonTest(contour, point, True) >= margin:
                return point
        return self.to_frame(side, 0.45, 0.5)

    def density(self) -> np.ndarray:
        """Compose all layers into the projected density map (float32, ~0 to ~1.4)."""
        a, size = self.anatomy, self.size
        x, y = pixel_grid(size)
        neck_to_shoulder = np.clip((y - (a.apex_y - 0.09)) / 0.1, 0.0, 1.0)
        half_width = 0.09 + (a.body_half_width - 0.09) * neck_to_shoulder ** 0.6
        body = np.sqrt(np.clip(1.0 - ((x - a.midline) / half_width) ** 2, 0.0, 1.0))

        lung = self.lung()
        knob = soft_ellipse(size, (a.midline + 0.065, a.heart_y - a.heart_h - 0.08),
                            (0.035, 0.03), 0.0, 0.1)
        displaced = 1.0 - np.maximum(0.8 * self.heart, 0.9 * knob)
        air = a.air * (0.55 * blur(lung, 0.004) + 0.45 * blur(lung, 0.035))
        air = air * displaced * self.air_gain

        markings = np.zeros((size, size), np.float32)
        for side in SIDES:
            for x0, y0, x1, y1, width, strength in vessel_segments(a, side):
                draw_polyline(markings, np.array([[x0, y0], [x1, y1]], np.float32),
                              width, strength)
        markings = blur(markings, 0.002) * lung * displaced * self.marking_gain * a.markings

        density = body - air + markings + self.bones() + self.opacity
        trachea = np.zeros((size, size), np.float32)
        carina = (a.midline, a.heart_y - a.heart_h - 0.08)
        draw_polyline(trachea, np.array([[a.midline, 0.0], carina], np.float32), 0.028)
        for sign in (-1.0, 1.0):
            draw_polyline(trachea, np.array([carina, [carina[0] + sign * 0.06, carina[1] + 0.06]],
                                            np.float32), 0.016)
        density -= 0.22 * blur(trachea, 0.004)
        if a.gastric_bubble:
            left_dome = a.cp_y + a.left_drop - a.dome
            density -= 0.3 * soft_ellipse(size, (a.midline + 0.17, left_dome + 0.06),
                                          (0.05, 0.03), 0.0, 0.15)
        if a.female:
            for sign in (-1.0, 1.0):
                density += 0.12 * soft_ellipse(size, (a.midline + sign * 0.24, a.cp_y - 0.02),
                                               (0.16, 0.11), 0.0, 0.25)
        return density * (body > 0)

    def bones(self) -> np.ndarray:
        """Spine, ribs with bright cortices, clavicles and (AP films) scapular borders."""
        a, size = self.anatomy, self.size
        bones = np.zeros((size, size), np.float32)
        for k in range(18):
            top = 0.0 + k * 0.056
            bones += 0.16 * soft_ellipse(size, (a.midline, top), (0.037, 0.022), 0.0, 0.08)
            for sign in (-1.0, 1.0):
                bones += 0.08 * soft_ellipse(size, (a.midline + sign * 0.025, top - 0.005),
                                             (0.009, 0.012), 0.0, 0.15)
        ribs = np.zeros((size, size), np.float32)
        for side in SIDES:
            for curve in rib_curves(a, side):
                draw_polyline(ribs, curve, 0.024, 0.55)   # marrow
                draw_polyline(ribs, curve - [0, 0.011], 0.004, 0.9)  # upper cortex
                draw_polyline(ribs, curve + [0, 0.011], 0.004, 0.9)  # lower cortex
            draw_polyline(bones, clavicle_curve(a, side, self.view), 0.02, 0.22)
            if self.view == "AP":
                sign = -1.0 if side == "right" else 1.0
                border = np.array([[a.midline + sign * (a.half_width - 0.06), a.apex_y + 0.08],
                                   [a.midline + sign * (a.half_width - 0.1), a.apex_y + 0.32]],
                                  np.float32)
                draw_polyline(bones, border, 0.006, 0.08)
        return blur(bones + 0.13 * ribs, 0.0015)
