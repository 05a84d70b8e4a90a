"""Reversed KD: the student model teaches the deeper teacher model (the roles swap).

    python -m chestkd.recipes.reversed_kd [--config recipes/X.yaml] [--teacher NAME|FILE.keras]
        [--student NAME] [--kd-loss hinton|ho2020_eq5|ho2020_eq8|sigmoid] [--temperature T]
        [--alpha A] [--teacher-outputs cached|online] [base-training options] [key=value ...]
"""
from chestkd.distill.strategies import kd_experiment
from chestkd.training.config import BASE_DEFAULTS, KD_DEFAULTS, resolve_config
from chestkd.training.experiment import cli_errors


def main(argv=None) -> dict:
    with cli_errors():
        config = resolve_config(argv, {**BASE_DEFAULTS, **KD_DEFAULTS}, __doc__)
        return kd_experiment(config, "reversed_kd")


if __name__ == "__main__":
    main()
