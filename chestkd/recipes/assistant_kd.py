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

Loss: the paper's L = H + lambda F + S is ``2 [(1 - a) H + a S + (lambda / 2) F]`` at
``alpha`` a = 0.5, so a weight here equals the paper's lambda / 2.
With no data given it runs on the phantom with :data:`PHANTOM_ASSISTANT` laid over the phantom
profile (small models at 32 px: minutes on two CPU cores); the paper's settings are
``--config recipes/assistant_kd.yaml`` (CheXpert) or ``recipes/covid19.yaml``. The run prints
its plan first.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from chestkd.cli import main_of
from chestkd.evaluation import markdown_table
from chestkd.experiments.chain import chain_settings, copy_stage_results, run_chain
from chestkd.errors import ConfigError
from chestkd.experiments.feature_kd import distil_features, feature_terms_for, member_names
from chestkd.experiments.kd import evaluate_once, resolve_kd_loss
from chestkd.experiments.store import obtain_model
from chestkd.training.config import BASE_DEFAULTS, KD_DEFAULTS, PHANTOM_DATASETS, resolve_config
from chestkd.training.experiment import build_model, load_run_data
from chestkd.training.run import start_run, write_json

PAPER_CHAIN = [["efficientnet_b6", "efficientnet_b7"], "densenet121", "conv3_student"]
DEFAULTS = {**BASE_DEFAULTS, "kd_loss": KD_DEFAULTS["kd_loss"],
            "temperature": 20.0, "alpha": 0.5,
            "chain": PAPER_CHAIN,
            "learning_rates": None,     # one per stage; None: learning_rate for every stage
            "feature_distances": None,  # one per distillation stage (chestkd.experiments.chain)
            "feature_weights": None,
            "feature_layers": None,
            "feature_options": None,
            "ablation": True}
# The recipe's phantom profile (laid over chestkd.training.config.PHANTOM_PROFILE, keys you
# set win): an ensemble teacher of two small networks of different families, a ResNet-32
# assistant and the 3-conv student at 32 px, so the chain and the ablation finish in minutes
# on two CPU cores (benchmarks/RESULTS.md, "Every recipe's no-data default": at 64 px and
# 2,000 films they took over 22 min).
PHANTOM_ASSISTANT = {"chain": [["resnet32", "baseline_cnn"], "resnet32", "conv3_student"],
                     "image_size": 32, "phantom_size": 32, "phantom_images": 2000,
                     "epochs": 6, "ablation": True}
RECIPE_PROFILES = {"phantom": PHANTOM_ASSISTANT}


def plan(config, chain, settings) -> str:
    """What the run will train, printed before anything is read or trained."""
    images = (f"the phantom, {config['phantom_images']} films written at "
              f"{config['phantom_size']} px" if config["dataset"] in PHANTOM_DATASETS
              and not config.get("data_dir") else f"{config['dataset']} from "
              f"{config.get('data_dir')}")
    members = member_names(chain[0])
    lines = [f"assistant_kd plan ({config.get('profile') or 'no'} profile): {images}; "
             f"{config['image_size']} px, {config['epochs']} epochs per training, batch "
             f"{config['batch_size']}, {config['optimizer']}, learning rates "
             f"{', '.join(f'{float(r):g}' for r in settings['learning_rates'])} per stage",
             f"  1. teacher {' + '.join(map(str, members))}: base training (model store)"
             + (", logits averaged" if len(members) > 1 else "")]
    for k, entry in enumerate(chain[1:]):
        teacher = " + ".join(map(str, member_names(chain[k])))
        lines.append(f"  {k + 2}. {entry} distilled from {teacher}: KD loss + "
                     f"{settings['distances'][k]} x {settings['weights'][k]:g}")
    if config.get("ablation"):
        lines.append(f"  ablation: {chain[-1]} base-trained alone (model store) and "
                     f"distilled straight from the teacher")
    lines.append("  the paper's settings: --config recipes/assistant_kd.yaml "
                 "(recipes/covid19.yaml: the COVID-19 case study)")
    return "\n".join(lines)


def scores_row(label: str, results: dict, stage_dir, multi_label: bool) -> dict:
    """Precision, recall, F1 (micro for multi-label, macro otherwise) and AUC of one model."""
    report = pd.read_csv(Path(stage_dir) / "classification_report.csv").set_index("class")
    average = report.loc["micro avg" if multi_label else "macro avg"]
    return {"model": label, "precision": float(average["precision"]),
            "recall": float(average["recall"]), "f1": float(average["f1"]),
            "auc": float(results["mean_auc"]), "params": int(results["params"]["total"]),
            "latency_ms": float(results["latency"]["median_ms"])}


def per_class_reports(run_dir, names) -> str:
    """The classification reports of the chain's stages, one section each (Table 2 layout)."""
    parts = []
    for letter, name in zip("abcdefghij", names):
        report = pd.read_csv(Path(run_dir) / name / "classification_report.csv")
        parts += [f"### ({letter}) {name.capitalize()}", "", markdown_table(report, ".4f"), ""]
    return "\n".join(parts)


def ablation(config, data, run_dir, chain, outcome) -> list:
    """Student alone (store) and student from the teacher directly, beside the chain."""
    settings, stages = outcome["settings"], outcome["stages"]
    student_name = chain[-1]
    student_lr = settings["learning_rates"][-1]
    stage_config = {**config, "learning_rate": float(student_lr)}
    alone, source = obtain_model(stage_config, data, student_name)
    alone_dir = Path(run_dir) / "student_alone"
    alone_dir.mkdir(parents=True, exist_ok=True)
    alone_results = copy_stage_results(source, alone_dir) if Path(source).is_dir() else \
        evaluate_once(alone, data, config, alone_dir, model_name=student_name)
    teachers = stages["teacher"]["models"]
    direct_dir = Path(run_dir) / "student_from_teacher"
    direct = distil_features(
        stage_config, direct_dir, data, teachers,
        lambda: build_model(student_name, data, stage_config),
        terms_for=lambda model: feature_terms_for(
            model, teachers, distance=settings["distances"][-1],
            weight=settings["weights"][-1], layers=settings["layers"][-1],
            options=settings["options"][-1]))
    direct_results = evaluate_once(direct, data, config, direct_dir, model_name=student_name)
    multi = data.multi_label
    return [scores_row("teacher alone", stages["teacher"]["results"], Path(run_dir) / "teacher",
                       multi),
            scores_row("student alone", alone_results, alone_dir, multi),
            scores_row("student from teacher", direct_results, direct_dir, multi),
            scores_row("student from assistant", stages["student"]["results"],
                       Path(run_dir) / "student", multi)]


def run(argv=None) -> dict:
    config = resolve_config(argv, DEFAULTS, __doc__, recipe_profiles=RECIPE_PROFILES)
    chain = config.get("chain")
    if not chain:
        raise ConfigError(f"--chain {chain!r}: a list of stages, e.g. "
                          f"[[efficientnet_b6, efficientnet_b7], densenet121, conv3_student]")
    settings = chain_settings(config, chain)  # a bad option fails before any data is read
    print(plan(config, chain, settings), flush=True)
    if not config.get("run_name") and not config.get("resume"):
        config["run_name"] = f"assistant_kd-{Path(str(chain[-1])).stem}"
    run_dir = start_run(config, "assistant_kd")
    print(f"run directory: {run_dir}")
    data = load_run_data(config, run_dir)
    resolve_kd_loss(config, data)
    outcome = run_chain(config, data, run_dir, chain)
    stages = outcome["stages"]
    names = list(stages)
    rows = [scores_row(f"{name} ({' + '.join(map(str, stage['name']))})"
                       if isinstance(stage["name"], list) else f"{name} ({stage['name']})",
                       stage["results"], Path(run_dir) / name, data.multi_label)
            for name, stage in stages.items()]
    chain_table = pd.DataFrame(rows)
    chain_table.to_csv(Path(run_dir) / "chain.csv", index=False)
    text = [f"# Teacher-assistant KD on {data.name}: {' -> '.join(map(str, chain))}", "",
            f"KD loss {config['kd_loss_used']}, T = {config['temperature']:g}, "
            f"alpha = {config['alpha']:g}; feature terms: "
            + "; ".join(f"{d} x {w:g} ({l if isinstance(l, str) else 'pairs'})" for d, w, l in
                        zip(outcome["settings"]["distances"], outcome["settings"]["weights"],
                            outcome["settings"]["layers"]))
            + (f". A demo on the phantom profile ({config['phantom_images']} films at "
               f"{config['image_size']} px, {config['epochs']} epochs, small models): it shows "
               f"the recipe run, NOT the paper's numbers (--config recipes/assistant_kd.yaml)."
               if config.get("profile") == "phantom" else ""), "",
            "## The chain (test split)", "", markdown_table(chain_table, ".4f"), "",
            "## Classification reports (test split)", "", per_class_reports(run_dir, names)]
    results = {"recipe": "assistant_kd", "chain": chain, "kd_loss": config["kd_loss_used"],
               "settings": outcome["settings"], "chain_table": rows,
               "teachers_unchanged": all(stage.get("teacher_unchanged", True)
                                         for stage in stages.values()),
               "teacher_sources": stages["teacher"]["sources"]}
    if config.get("ablation"):
        ablation_rows = ablation(config, data, run_dir, chain, outcome)
        table = pd.DataFrame(ablation_rows)
        table.to_csv(Path(run_dir) / "ablation.csv", index=False)
        (Path(run_dir) / "ablation.md").write_text(markdown_table(table, ".4f") + "\n")
        text += ["## Ablation (test split)", "", markdown_table(table, ".4f"), ""]
        results["ablation"] = ablation_rows
    (Path(run_dir) / "per_class_reports.md").write_text(per_class_reports(run_dir, names))
    (Path(run_dir) / "summary.md").write_text("\n".join(text) + "\n")
    print("\n" + "\n".join(text))
    results["run_dir"] = str(run_dir)
    write_json(results, Path(run_dir) / "metrics.json")
    return json.loads(json.dumps(results, default=str))


main = main_of(run)

if __name__ == "__main__":
    raise SystemExit(main())
