"""A distillation chain: teacher -> assistant(s) -> student, each stage taught by the last.

``chain = [teacher, assistant, ..., student]``; an entry that is a list is an ensemble whose
averaged logits teach the next stage (and whose members' maps each feed the feature terms,
their weight split evenly). Stage 0 is base-trained in the model store; stage k >= 1 is the
one Distiller: KD loss against stage k-1's temperature soft labels plus
``feature_weights[k-1] * distance`` over the layer pairs of ``feature_layers[k-1]``.

Defaults (:func:`chain_options`), with the reasons:

* distances: ``feature_kl`` for every stage but the last, ``wasserstein`` for the last (the
  teacher-assistant paper: KL between assistant and teacher maps, Eq. 3; Wasserstein between
  student and assistant maps, Eq. 4);
* layer pairs: ``last`` for KL stages — the paper compares the assistant's "intermediate
  feature maps" with the teacher's without naming them; the last feature map is the one
  layer every backbone has and the one carrying the teacher's high-level features;
  ``depth`` for the Wasserstein stage — the paper's "output of each convolutional layer of
  the student" against "feature maps at different levels of the teacher", i.e. every stage
  end of the student against the teacher's at the same relative depth
  (:mod:`chestkd.distill.layer_pairs`);
* weights: 0.1 for each. The paper gives no value. The aim is that each feature term, once
  weighted, stays below the label term, so the features guide and the labels decide.
  Measured in the test suite's tiny run (single-label phantom, 32 px, conv3_student at every
  stage, first epoch): the assistant's feature KL (channel mode, T = 1, 1x1 adapter) 1.9
  against a hard CE of 1.9; the student's three Wasserstein terms 0.11 + 0.60 + 2.74 = 3.4
  against a hard CE of 2.2. Weighted by 0.1 they are 0.19 and 0.34. (Under Hinton's T^2 the
  soft term's VALUE is far larger at T = 20-30, but its gradient is of the hard term's
  order, which is what the T^2 is for.) Re-measure on real data before trusting 0.1;
* KL options: channel mode (Shu et al. 2021), temperature 1; Wasserstein: p = 1, whole maps.

Below the chain: what the ``assistant_kd`` recipe reports of it (the stages side by side,
the per-class reports, the summary) and its ablation (the student alone, and distilled
straight from the teacher).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from chestkd.data.dataset import Dataset
from chestkd.errors import ConfigError
from chestkd.evaluation import markdown_table
from chestkd.io import atomic_copy
from chestkd.models import get_spec
from chestkd.experiments.feature_kd import (averaged_model, distil_features,
                                            feature_terms_for, member_names, obtain_teachers,
                                            with_learning_rate)
from chestkd.experiments.kd import evaluate_once, obtained_model_results
from chestkd.experiments.store import obtain_model
from chestkd.training.classifier import build_model
from chestkd.training.options import RunOptions, as_options

DEFAULT_FEATURE_WEIGHT = 0.1
DEFAULT_OPTIONS = {"feature_kl": {"mode": "channel", "temperature": 1.0},
                   "wasserstein": {"p": 1}}


def _per_stage(config, key, stages, default):
    value = config.get(key)
    if value is None:
        return [default(k) for k in range(stages)]
    if not isinstance(value, (list, tuple)) or len(value) != stages:
        raise ConfigError(f"--{key.replace('_', '-')} {value!r}: one entry per "
                          f"{'stage' if key == 'learning_rates' else 'distillation stage'} "
                          f"({stages})")
    return [default(k) if item is None else item for k, item in enumerate(value)]


@dataclass(frozen=True)
class ChainOptions:
    """What the assistant recipe adds to a run's options (:func:`chain_options`): the chain,
    each stage's learning rate, and each distillation stage's feature distance, weight,
    layer pairs and distance options (``term_options``)."""
    chain: tuple
    learning_rates: tuple
    distances: tuple
    weights: tuple
    layers: tuple
    term_options: tuple
    ablation: bool

    def settings(self) -> dict:
        """The per-stage settings as a run records them (``metrics.json``)."""
        return {"learning_rates": list(self.learning_rates), "distances": list(self.distances),
                "weights": list(self.weights), "layers": list(self.layers),
                "options": list(self.term_options)}


def chain_options(config) -> ChainOptions:
    """The chain's options of a resolved configuration, each checked and every model name
    resolved (before any data); the per-stage settings left unset take the defaults above."""
    chain = config.get("chain")
    if not chain:
        raise ConfigError(f"--chain {chain!r}: a list of stages, e.g. "
                          f"[[efficientnet_b6, efficientnet_b7], densenet121, conv3_student]")
    if not isinstance(chain, (list, tuple)) or len(chain) < 2:
        raise ConfigError(f"--chain {chain!r}: a list of at least two stages (teacher, student)")
    for index, entry in enumerate(chain):
        names = member_names(entry)
        for name in names:   # a typo is a ConfigError before any stage trains
            if not str(name).endswith(".keras"):
                get_spec(str(name))
        if index and len(names) != 1:
            raise ConfigError(f"--chain: only the first stage (the teacher) can be an "
                              f"ensemble; stage {index} is {entry!r}")
    steps = len(chain) - 1
    distances = _per_stage(config, "feature_distances", steps,
                           lambda k: "wasserstein" if k == steps - 1 else "feature_kl")
    return ChainOptions(
        chain=tuple(chain),
        learning_rates=tuple(_per_stage(config, "learning_rates", len(chain),
                                        lambda k: config["learning_rate"])),
        distances=tuple(distances),
        weights=tuple(_per_stage(config, "feature_weights", steps,
                                 lambda k: DEFAULT_FEATURE_WEIGHT)),
        layers=tuple(_per_stage(config, "feature_layers", steps,
                                lambda k: "depth" if distances[k] == "wasserstein" else "last")),
        term_options=tuple(_per_stage(config, "feature_options", steps,
                                      lambda k: DEFAULT_OPTIONS.get(distances[k], {}))),
        ablation=bool(config.get("ablation")))


def stage_plan(stages: ChainOptions) -> list:
    """The plan's lines for the stages: what each trains, and from what."""
    chain = stages.chain
    members = member_names(chain[0])
    lines = [f"  1. teacher {' + '.join(map(str, members))}: base training (model store)"
             + (", logits averaged" if len(members) > 1 else "")]
    for k, entry in enumerate(chain[1:]):
        teacher = " + ".join(map(str, member_names(chain[k])))
        lines.append(f"  {k + 2}. {entry} distilled from {teacher}: KD loss + "
                     f"{stages.distances[k]} x {stages.weights[k]:g}")
    if stages.ablation:
        lines.append(f"  ablation: {chain[-1]} base-trained alone (model store) and "
                     f"distilled straight from the teacher")
    return lines


def weights_digest(models) -> str:
    """SHA-1 of every weight of ``models`` (to show a teacher is unchanged by a stage)."""
    digest = hashlib.sha1()
    for model in models:
        for weight in model.weights:
            digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()


# Files of an evaluation the store's copy_results leaves out, which the tables read.
REPORT_FILES = ("classification_report.csv", "per_class_scores.csv", "confusion_matrix.png",
                "model_info.json")


def stage_results(options: RunOptions, data, model, source, stage_dir) -> dict:
    """A store entry's results (and classification report) in ``stage_dir``: copied, or
    scored here where the run asks for other intervals
    (:func:`~chestkd.experiments.kd.obtained_model_results`)."""
    Path(stage_dir).mkdir(parents=True, exist_ok=True)
    results = obtained_model_results(options, data, stage_dir, model, source)
    for name in REPORT_FILES:
        if (Path(source) / name).exists() and not (Path(stage_dir) / name).exists():
            atomic_copy(Path(source) / name, Path(stage_dir) / name)
    return results


def teacher_results(options: RunOptions, data, teachers, sources, stage_dir, names) -> dict:
    """Results of the chain's teacher (the models ``names``): the store entry's, or the
    averaged ensemble's."""
    if len(teachers) == 1 and Path(sources[0]).is_dir():
        return stage_results(options, data, teachers[0], sources[0], stage_dir)
    Path(stage_dir).mkdir(parents=True, exist_ok=True)
    return evaluate_once(averaged_model(teachers), data, options, stage_dir,
                         model_name=" + ".join(map(str, names)))


def distil_stage(options: RunOptions, stages: ChainOptions, data, stage_dir, teachers,
                 student_name, step, *, learning_rate):
    """One distillation stage (``step`` indexes the per-stage settings of ``stages``);
    returns (student, teacher digest before, after)."""
    stage_options = with_learning_rate(options, learning_rate)
    before = weights_digest(teachers)
    student = distil_features(
        stage_options, stage_dir, data, teachers,
        lambda: build_model(student_name, data, stage_options),
        terms_for=lambda model: feature_terms_for(
            model, teachers, distance=stages.distances[step], weight=stages.weights[step],
            layers=stages.layers[step], options=stages.term_options[step]))
    return student, before, weights_digest(teachers)


def check_layers(options: RunOptions, stages: ChainOptions, data: Dataset) -> None:
    """Before anything trains: each stage's architecture (``weights=None``; a ``.keras``
    stage as saved) and the feature terms between consecutive stages, so a layer name that a
    stage lacks is a ConfigError naming it, not an error after the teacher's training."""
    from chestkd.distill.feature_terms import FeatureTermSet
    from chestkd.models import build
    from chestkd.training.run import load_model

    size = as_options(options).image.image_size
    shape = (size, size, 3)

    def architectures(entry):
        return [load_model(name) if str(name).endswith(".keras")
                else build(str(name), data.num_classes, shape, weights=None)
                for name in member_names(entry)]

    teachers = architectures(stages.chain[0])
    for step, entry in enumerate(stages.chain[1:]):
        (student,) = architectures(entry)
        FeatureTermSet(feature_terms_for(
            student, teachers, distance=stages.distances[step], weight=stages.weights[step],
            layers=stages.layers[step], options=stages.term_options[step]), student, teachers)
        teachers = [student]


def run_chain(options: RunOptions, stages: ChainOptions, data: Dataset, run_dir) -> dict:
    """Train every stage of the chain; returns {stage name: {"model", "results", ...}}."""
    options, run_dir, chain = as_options(options), Path(run_dir), stages.chain
    check_layers(options, stages, data)
    teachers, sources = obtain_teachers(options, data, chain[0],
                                        learning_rate=stages.learning_rates[0])
    trained = {"teacher": {"models": teachers, "sources": sources, "name": chain[0],
                           "results": teacher_results(options, data, teachers, sources,
                                                      run_dir / "teacher",
                                                      member_names(chain[0]))}}
    previous = teachers
    for step, entry in enumerate(chain[1:]):
        name = stage_name(step + 1, len(chain))
        student, before, after = distil_stage(options, stages, data, run_dir / name, previous,
                                              member_names(entry)[0], step,
                                              learning_rate=stages.learning_rates[step + 1])
        results = evaluate_once(student, data, options, run_dir / name,
                                model_name=member_names(entry)[0])
        trained[name] = {"models": [student], "name": entry, "results": results,
                         "teacher_unchanged": before == after}
        previous = [student]
    return trained


def stage_name(index: int, length: int) -> str:
    """``teacher``, ``assistant`` (or ``assistant<k>`` for longer chains), ``student``."""
    if index == 0:
        return "teacher"
    if index == length - 1:
        return "student"
    return "assistant" if length == 3 else f"assistant{index}"


# ----------------------------------------------------------------------------- the report

def scores_row(label: str, results: dict, stage_dir, multi_label: bool) -> dict:
    """Precision, recall, F1 (micro for multi-label, macro otherwise) and AUC of one model."""
    report = pd.read_csv(Path(stage_dir) / "classification_report.csv").set_index("class")
    average = report.loc["micro avg" if multi_label else "macro avg"]
    return {"model": label, "precision": float(average["precision"]),
            "recall": float(average["recall"]), "f1": float(average["f1"]),
            "auc": float(results["mean_auc"]), "params": int(results["params"]["total"]),
            "latency_ms": float(results["latency"]["median_ms"])}


def chain_rows(stages: dict, run_dir, multi_label: bool) -> list:
    """One :func:`scores_row` per stage of :func:`run_chain`, labelled ``stage (model)``."""
    return [scores_row(f"{name} ({' + '.join(member_names(stage['name']))})",
                       stage["results"], Path(run_dir) / name, multi_label)
            for name, stage in stages.items()]


def per_class_reports(run_dir, names) -> str:
    """The classification reports of the chain's stages, one section each (Table 2 layout)."""
    parts = []
    for letter, name in zip("abcdefghij", names):
        report = pd.read_csv(Path(run_dir) / name / "classification_report.csv")
        parts += [f"### ({letter}) {name.capitalize()}", "", markdown_table(report, ".4f"), ""]
    return "\n".join(parts)


def summary_lines(options: RunOptions, stages: ChainOptions, data_name: str, trained: dict,
                  rows: list, run_dir, kd_loss: str) -> list:
    """``summary.md`` up to the ablation: the chain's settings, its table, the reports."""
    options = as_options(options)
    terms = "; ".join(f"{d} x {w:g} ({l if isinstance(l, str) else 'pairs'})" for d, w, l in
                      zip(stages.distances, stages.weights, stages.layers))
    demo = (f". A demo on the phantom profile ({options.config['phantom_images']} films at "
            f"{options.image.image_size} px, {options.training.epochs} epochs, small models): "
            f"it shows the recipe run, NOT the paper's numbers (--config "
            f"recipes/assistant_kd.yaml)." if options.config.get("profile") == "phantom" else "")
    return [f"# Teacher-assistant KD on {data_name}: {' -> '.join(map(str, stages.chain))}",
            "", f"KD loss {kd_loss}, T = {options.kd.temperature:g}, "
            f"alpha = {options.kd.alpha:g}; feature terms: {terms}{demo}", "",
            "## The chain (test split)", "", markdown_table(pd.DataFrame(rows), ".4f"), "",
            "## Classification reports (test split)", "",
            per_class_reports(run_dir, list(trained))]


def chain_metrics(stages: ChainOptions, trained: dict, rows: list, kd_loss: str) -> dict:
    """``metrics.json`` of the chain: its settings, table, and whether every teacher stayed
    unchanged by the stage it taught."""
    return {"recipe": "assistant_kd", "chain": list(stages.chain), "kd_loss": kd_loss,
            "settings": stages.settings(), "chain_table": rows,
            "teachers_unchanged": all(stage.get("teacher_unchanged", True)
                                      for stage in trained.values()),
            "teacher_sources": trained["teacher"]["sources"]}


def write_ablation(rows: list, run_dir) -> list:
    """``ablation.csv`` and ``ablation.md`` of :func:`run_ablation`'s rows; returns the
    summary's section."""
    table = pd.DataFrame(rows)
    table.to_csv(Path(run_dir) / "ablation.csv", index=False)
    (Path(run_dir) / "ablation.md").write_text(markdown_table(table, ".4f") + "\n")
    return ["## Ablation (test split)", "", markdown_table(table, ".4f"), ""]


def run_ablation(options: RunOptions, stages: ChainOptions, data: Dataset, run_dir,
                 trained: dict) -> list:
    """The chain's last stage trained alone (model store) and distilled straight from the
    teacher, beside the teacher and the chain's student: four :func:`scores_row` rows (three
    for a two-stage chain, whose student is already the one from the teacher)."""
    run_dir = Path(run_dir)
    student_name, student_lr = stages.chain[-1], stages.learning_rates[-1]
    alone, source = obtain_model(with_learning_rate(options, student_lr), data, student_name)
    alone_dir = run_dir / "student_alone"
    alone_dir.mkdir(parents=True, exist_ok=True)
    alone_results = stage_results(options, data, alone, source, alone_dir) \
        if Path(source).is_dir() else \
        evaluate_once(alone, data, options, alone_dir, model_name=student_name)
    multi = data.multi_label
    rows = [scores_row("teacher alone", trained["teacher"]["results"], run_dir / "teacher",
                       multi),
            scores_row("student alone", alone_results, alone_dir, multi)]
    if len(stages.chain) == 2:
        # No assistant: the chain's student IS the student distilled from the teacher.
        print("ablation: a two-stage chain has no assistant; its student is the student "
              "from the teacher")
        return rows + [scores_row("student from teacher", trained["student"]["results"],
                                  run_dir / "student", multi)]
    direct_dir = run_dir / "student_from_teacher"
    direct, _, _ = distil_stage(options, stages, data, direct_dir, trained["teacher"]["models"],
                                student_name, -1, learning_rate=student_lr)
    direct_results = evaluate_once(direct, data, options, direct_dir, model_name=student_name)
    return rows + [scores_row("student from teacher", direct_results, direct_dir, multi),
                   scores_row("student from assistant", trained["student"]["results"],
                              run_dir / "student", multi)]
