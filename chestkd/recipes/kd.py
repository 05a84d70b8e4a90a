"""Knowledge distillation of a teacher into a student: the standard, reversed and defective
strategies of Ho & Gwak (2020), one recipe with the strategy as an option.

    python -m chestkd.recipes.kd [--strategy standard|reversed|defective]
        [--config recipes/X.yaml] [--teacher NAME|FILE.keras] [--student NAME]
        [--kd-loss sigmoid|hinton|ho2020_eq5|ho2020_eq8] [--temperature T] [--alpha A]
        [--teacher-outputs cached|online] [--defective-fraction F] [--seeds 0,1,2]
        [base-training options] [key=value ...]

* standard: the teacher (a model name, trained first and kept in the model store, or a
  ``.keras`` checkpoint) teaches the student;
* reversed: the roles swap: the student model teaches the teacher model;
* defective: the teacher is its checkpoint at ``defective_fraction`` of the full schedule
  (the paper: "teachers trained over the first 50 epochs" of 200, i.e. 0.25).

``--kd-loss`` unset follows the data: ``sigmoid`` for multi-label findings, ``hinton`` for
exclusive classes. ``python -m chestkd.recipes.standard_kd`` (``reversed_kd``,
``defective_kd``) is this recipe with that strategy.

With no data given it runs on the phantom with :data:`RECIPE_PROFILES` over the phantom
profile (the main job's ResNet-20, batch 16, 10 epochs as the teacher; the 3-conv student);
the paper's settings are ``--config recipes/X.yaml``
(``recipes/table1/standard_kd-resnet152-densenet121.yaml``: one file per Table 1
cell, on the shared ``recipes/paper_kd.yaml``). The run prints its plan first.
"""
from chestkd.experiments.kd import kd_experiment
from chestkd.experiments.repeat import data_in_plan, recipe_entry
from chestkd.training.config import BASE_DEFAULTS, KD_DEFAULTS

DEFAULTS = {**BASE_DEFAULTS, **KD_DEFAULTS}
# No data (over PHANTOM_PROFILE; keys you set win): the main job's model and schedule as the
# teacher (a ResNet-32 for 15 epochs took 8 min 36 s on 2 cores; RESULTS.md).
RECIPE_PROFILES = {"phantom": {"teacher": "resnet20", "batch_size": 16, "epochs": 10}}


def plan(config) -> str:
    """What the run will train, printed before anything is read or trained."""
    images = data_in_plan(config)
    strategy = config["strategy"]
    teacher, student = config["teacher"], config["student"]
    if strategy == "reversed":
        teacher, student = student, teacher
    teacher_epochs = int(config.get("teacher_epochs") or config["epochs"])
    how = ("loaded" if str(teacher).endswith(".keras") else
           f"base training, {teacher_epochs} epochs (model store)"
           + (f", its checkpoint at {float(config['defective_fraction']):g} of them"
              if strategy == "defective" else ""))
    seeds = f"; once per seed {config['seeds']}" if config.get("seeds") else ""
    return "\n".join([
        f"kd plan ({config.get('profile') or 'no'} profile, {strategy} KD): {images}; "
        f"{config['image_size']} px, batch {config['batch_size']}, {config['optimizer']} lr "
        f"{config['learning_rate']:g}{seeds}",
        f"  1. teacher {teacher}: {how}",
        f"  2. student {student} distilled from it, {config['epochs']} epochs (KD loss "
        f"{config['kd_loss'] or 'by the data'}, T = {config['temperature']:g}, alpha = "
        f"{config['alpha']:g}, {config['teacher_outputs']} teacher outputs)",
        "  the paper's settings: --config recipes/table1/"
        f"{strategy}_kd-resnet152-densenet121.yaml (one file per Table 1 cell)"
        + ("; this phantom demo's numbers are NOT the paper's"
           if config.get("profile") == "phantom" else "")])


def entry(strategy: str | None = None):
    """``(run, main)`` of this recipe, with ``strategy`` as the default (``standard_kd`` ...)."""
    defaults = DEFAULTS if strategy is None else {**DEFAULTS, "strategy": strategy}
    return recipe_entry(kd_experiment, defaults, __doc__, plan=plan,
                        recipe_profiles=RECIPE_PROFILES)


run, main = entry()

if __name__ == "__main__":
    raise SystemExit(main())
