"""The patterns of the single-label (pneumonia) phantom: each edits a phantom ``Scene``.

* normal: nothing added;
* pneumonia (bacterial lobar pneumonia): one focal consolidation, either a lobar opacity
  with a sharp border along a fissure and dark air bronchograms, or a round segmental one;
  one case in ten has a second focus;
* covid19 (COVID-19 pneumonia, as described by e.g. Wong et al., Radiology 2020):
  ground-glass opacities, bilateral in 85 % of cases, peripheral (along the lateral chest
  wall and the diaphragm) and in the lower zones, patchy and faint; vessels stay visible.

Strengths vary from subtle to obvious (a COVID-19 case may be barely visible, a pneumonia
may be small), so a classifier has to learn the *distribution* of the opacity (focal and
dense vs. diffuse, peripheral and faint), not just whether there is one. Breast shadows in
women's lower zones (the anatomy's) are a natural confounder of faint basal opacities.

Every pattern returns a list of normalised boxes ``(x0, y0, x1, y1)``, one per lesion (a
bilateral COVID-19 pattern has two), which the saliency scoring compares with the maps.
"""
from __future__ import annotations

import numpy as np

from chestkd.data.phantom.anatomy import Scene, blur, pixel_grid
from chestkd.data.phantom.findings import _mask_box, _side, consolidation, pneumonia

Box = tuple[float, float, float, float]
PATTERNS = ("normal", "pneumonia", "covid19")


def _weakened(edit, scene: Scene, rng, factor: float) -> Box:
    """Apply a phantom finding at ``factor`` (0..1) of its own strength.

    The finding is drawn as usual, then what it did to the scene's opacity, air and markings
    is scaled by ``factor``, so the shape is the finding's own and only its contrast drops.
    """
    before = scene.opacity.copy(), scene.air_gain.copy(), scene.marking_gain.copy()
    box = edit(scene, rng)
    scene.opacity = before[0] + factor * (scene.opacity - before[0])
    scene.air_gain = before[1] + factor * (scene.air_gain - before[1])
    scene.marking_gain = before[2] + factor * (scene.marking_gain - before[2])
    return box


def focal_pneumonia(scene: Scene, rng) -> list[Box]:
    """One focal consolidation (lobar 55 %, round segmental 45 %), rarely a second focus."""
    boxes = [_focus(scene, rng)]
    if rng.random() < 0.1:   # bronchopneumonia: a second, usually smaller focus
        boxes.append(_focus(scene, rng, weaker=0.7))
    return boxes


def _focus(scene: Scene, rng, weaker: float = 1.0) -> Box:
    if rng.random() < 0.55:
        return _weakened(pneumonia, scene, rng, weaker * rng.uniform(0.5, 1.0))
    return _weakened(consolidation, scene, rng, weaker * rng.uniform(0.7, 1.0))


def covid_ground_glass(scene: Scene, rng) -> list[Box]:
    """Bilateral (85 %) peripheral lower-zone ground-glass opacities; one box per lung."""
    sides = ("right", "left") if rng.random() < 0.85 else (_side(rng),)
    severity = rng.uniform(0.5, 1.0)
    x, y = pixel_grid(scene.size)
    boxes = []
    for side in sides:
        lateral, medial, top, bottom = scene.lung_frame(side)
        rel_x = np.clip((x - lateral) / (medial - lateral), 0.0, 1.0)  # 0 at the chest wall
        rel_y = (y - top) / (bottom - top)
        # Lower zones: a soft step below a level between 40 % and 60 % of the lung height.
        lower = 1.0 / (1.0 + np.exp(-(rel_y - rng.uniform(0.4, 0.6)) / 0.08))
        # Peripheral: close to the outline (chest wall, diaphragm), but not the mediastinum.
        near_wall = np.exp(-scene.wall_distance(side) / rng.uniform(0.04, 0.07))
        lateral_weight = np.clip(1.3 - 1.5 * rel_x, 0.0, 1.0)
        noise = blur(rng.random((scene.size, scene.size)).astype(np.float32), 0.025)
        noise = (noise - noise.mean()) / (noise.std() + 1e-6)
        patchy = np.clip(0.55 + 0.45 * noise, 0.0, 1.0)
        mask = blur((lower * near_wall * lateral_weight * patchy).astype(np.float32), 0.01)
        mask = mask * scene.lungs[side]
        mask = mask / max(float(mask.max()), 1e-6)
        # Ground glass: partial filling of the air spaces; markings are left untouched.
        scene.air_gain *= 1.0 - severity * rng.uniform(0.2, 0.35) * mask
        scene.opacity += severity * rng.uniform(0.08, 0.18) * mask
        boxes.append(_mask_box(mask, 0.3))
    return boxes


PATTERN_EDITS = {"normal": lambda scene, rng: [], "pneumonia": focal_pneumonia,
                 "covid19": covid_ground_glass}
