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
"""
from chestkd.cli import main_of
from chestkd.experiments.kd import kd_experiment
from chestkd.experiments.repeat import over_seeds
from chestkd.training.config import BASE_DEFAULTS, KD_DEFAULTS, resolve_config

DEFAULTS = {**BASE_DEFAULTS, **KD_DEFAULTS}


def run(argv=None, *, strategy: str | None = None) -> dict:
    defaults = DEFAULTS if strategy is None else {**DEFAULTS, "strategy": strategy}
    config = resolve_config(argv, defaults, __doc__)
    return over_seeds(kd_experiment, config) if config.get("seeds") else kd_experiment(config)


main = main_of(run)

if __name__ == "__main__":
    raise SystemExit(main())
