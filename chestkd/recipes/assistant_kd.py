"""Teacher-assistant KD (Bandyopadhyay et al.): teacher -> assistant -> student, with feature maps.

    python -m chestkd.recipes.assistant_kd [--config recipes/assistant_kd.yaml]
        [chain=[[efficientnet_b6, efficientnet_b7], densenet121, conv3_student]]
        [learning_rates=[...]] [feature_weights=[l1, l2]] [feature_distances=[...]]
        [feature_layers=[depth|last|[[s, t], ...], ...]] [--temperature T] [--alpha A]
        [--ablation false] [base-training options] [key=value ...]

1. the chain's first entry is base-trained in the model store (a list: an ensemble whose
   averaged logits teach; each member trained once and kept);
2. every later entry is distilled from the one before it by the one Distiller: the KD loss
   (``kd_loss``: sigmoid-BCE against the temperature soft labels for multi-label findings,
   Hinton's softmax KL for exclusive classes) plus ``feature_weights[k]`` times a feature
   distance (``chestkd.experiments.chain`` documents the defaults: feature KL of the last
   maps for the assistant, Wasserstein over every stage end of the student at matching depth,
   0.1 each, and why);
3. each stage is evaluated on the test split (AUC, classification report, and for exclusive
   classes the confusion matrix); ``per_class_reports.md`` puts the reports of teacher,
   assistant and student side by side (the paper's Table 2 layout);
4. with ``ablation`` (default true): the student trained alone (model store) and distilled
   straight from the teacher, and ``ablation.md``: teacher alone / student alone / student
   from teacher / student from assistant with precision, recall, F1 (micro average over all
   findings for multi-label data, macro average for exclusive classes) and AUC.

Loss: ``(1 - a) H + a S + w F``, the paper's L = H + lambda F + S with equal label and soft
weights at ``alpha`` a = 0.5, but not term for term: chestkd's H and S are means over the
classes (the paper sums them) and S carries the T^2 factor, so no ``w`` reproduces the paper's
balance exactly (against H alone, w = lambda / (2 C) for C classes).
With no data given it runs on the phantom with :data:`PHANTOM_ASSISTANT` laid over the phantom
profile (small models at 32 px: minutes on two CPU cores); the paper's settings are
``--config recipes/assistant_kd.yaml`` (CheXpert) or ``recipes/covid19.yaml``. The run prints
its plan first.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from chestkd.experiments.chain import (chain_metrics, chain_options, chain_rows,
                                       per_class_reports, run_ablation, run_chain, stage_plan,
                                       summary_lines, write_ablation)
from chestkd.experiments.kd import resolve_kd_loss
from chestkd.experiments.repeat import data_in_plan, recipe_entry
from chestkd.training.classifier import prepare_run_data
from chestkd.training.config import BASE_DEFAULTS, KD_DEFAULTS
from chestkd.training.options import run_options
from chestkd.training.run import open_run, write_json

PAPER_CHAIN = [["efficientnet_b6", "efficientnet_b7"], "densenet121", "conv3_student"]
DEFAULTS = {**BASE_DEFAULTS, "kd_loss": KD_DEFAULTS["kd_loss"], "temperature": 20.0,
            "alpha": 0.5, "chain": PAPER_CHAIN,
            "learning_rates": None,  # one per stage; None: learning_rate for every stage
            # one per distillation stage (chestkd.experiments.chain documents the defaults)
            "feature_distances": None, "feature_weights": None, "feature_layers": None,
            "feature_options": None, "ablation": True}
# The recipe's phantom profile (laid over chestkd.training.config.PHANTOM_PROFILE, keys you
# set win): an ensemble teacher of two small networks of different families, a ResNet-20
# assistant and the 3-conv student at 32 px, so the chain and the ablation finish in minutes
# on two CPU cores. ResNet-32 learnt nothing here in 6 epochs (RESULTS.md, "The assistant_kd
# demo learns"); at 64 px and 2,000 films the chain took over 22 min.
PHANTOM_ASSISTANT = {"chain": [["resnet20", "baseline_cnn"], "resnet20", "conv3_student"],
                     "image_size": 32, "phantom_size": 32, "phantom_images": 2000,
                     "epochs": 6, "ablation": True}
RECIPE_PROFILES = {"phantom": PHANTOM_ASSISTANT}


def plan(config, stages) -> str:
    """What the run will train, printed before anything is read or trained."""
    images = data_in_plan(config)
    return "\n".join([
        f"assistant_kd plan ({config.get('profile') or 'no'} profile): {images}; "
        f"{config['image_size']} px, {config['epochs']} epochs per training, batch "
        f"{config['batch_size']}, {config['optimizer']}, learning rates "
        f"{', '.join(f'{float(r):g}' for r in stages.learning_rates)} per stage",
        *stage_plan(stages),
        "  the paper's settings: --config recipes/assistant_kd.yaml "
        "(recipes/covid19.yaml: the COVID-19 case study)"])


def checked_plan(config: dict) -> str:
    return plan(config, chain_options(config))  # a bad option fails before any data is read


def run_once(config: dict) -> dict:
    chain = chain_options(config).chain  # checked before the run folder is made
    named = {} if config.get("run_name") or config.get("resume") else {
        "run_name": f"assistant_kd-{Path(str(chain[-1])).stem}"}
    run_dir, options = open_run(run_options({**config, **named}), "assistant_kd")
    print(f"run directory: {run_dir}")
    data, options = prepare_run_data(options, run_dir)
    # The run's own chain options (a resumed run's saved ones, the data's profile applied).
    stages = chain_options(options.config)
    kd_loss = resolve_kd_loss(options, data)  # the tables name it
    # 1-2. the teacher (model store), then each stage distilled from the one before it
    trained = run_chain(options, stages, data, run_dir)
    # 3. every stage on the test split, side by side
    rows = chain_rows(trained, run_dir, data.multi_label)
    pd.DataFrame(rows).to_csv(run_dir / "chain.csv", index=False)
    text = summary_lines(options, stages, data.name, trained, rows, run_dir, kd_loss)
    results = chain_metrics(stages, trained, rows, kd_loss)
    # 4. the ablation: the student alone, and distilled straight from the teacher
    if stages.ablation:
        results["ablation"] = run_ablation(options, stages, data, run_dir, trained)
        text += write_ablation(results["ablation"], run_dir)
    (run_dir / "per_class_reports.md").write_text(per_class_reports(run_dir, list(trained)))
    (run_dir / "summary.md").write_text("\n".join(text) + "\n")
    print("\n" + "\n".join(text))
    results["run_dir"] = str(run_dir)
    write_json(results, run_dir / "metrics.json")
    return json.loads(json.dumps(results, default=str))


run, main = recipe_entry(run_once, DEFAULTS, __doc__, plan=checked_plan,
                         recipe_profiles=RECIPE_PROFILES)

if __name__ == "__main__":
    raise SystemExit(main())
