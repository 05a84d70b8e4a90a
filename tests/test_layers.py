"""The layering of chestkd/__init__.py (lower layers never import higher ones), the narrower
rules that hold inside it, and the declared public names of every subpackage."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "chestkd"
LAYERS = [{"errors", "io", "cli", "scores"}, {"data"}, {"models"}, {"training"}, {"distill"},
          {"evaluation"}, {"saliency", "robustness"}, {"experiments"},
          {"recipes", "report", "predict", "export", "landscape"}]


def _layer(name):
    return next(i for i, names in enumerate(LAYERS) if name in names)


def test_lower_layers_never_import_higher_ones():
    offences = []
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts == ("__init__",):
            continue
        source = parts[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("chestkd."):
                target = node.module.split(".")[1]
                if _layer(target) > _layer(source):
                    offences.append(f"{path.relative_to(PACKAGE)} imports {node.module}")
    assert not offences, offences


# --------------------------------------------------------------------------- narrower rules

SUBPACKAGES = ("data", "data/phantom", "models", "training", "distill", "evaluation",
               "saliency", "robustness", "experiments", "recipes")
# The saliency package: three wings, each importing only the wings before it (methods, then
# the analyses computed from maps, then the report that composes both), under the commands.
SALIENCY_WINGS = ("methods", "analysis", "report")
SALIENCY_COMMANDS = {"__init__", "__main__", "label_check"}
# The modules of the methods wing: a method module imports no report code (figures, tables,
# inputs) and no analysis.
SALIENCY_METHODS = {"base", "graph", "tfkv", "vanilla", "guided_backprop",
                    "integrated_gradients", "smoothgrad", "cam", "gradcam",
                    "gradcam_plus_plus", "scorecam"}
# Imports that break a rule below today, each with the change that removes it. The test fails
# on any other offence, and on an entry here that no longer occurs (then delete it).
KNOWN_EXCEPTIONS: set = set()


def _chestkd_imports(path):
    """Every ``chestkd.*`` module a file imports (``from x import`` and ``import x``)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("chestkd."):
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("chestkd."))


def _offences(package, forbidden):
    found = set()
    for path in (PACKAGE / package).rglob("*.py"):
        name = path.relative_to(PACKAGE).as_posix()
        found |= {(name, module) for module in _chestkd_imports(path) if forbidden(name, module)}
    return found


def test_distill_imports_neither_data_nor_evaluation():
    rule = lambda name, module: module.split(".")[1] in ("data", "evaluation")  # noqa: E731
    found = _offences("distill", rule)
    assert found - KNOWN_EXCEPTIONS == set()
    assert {e for e in KNOWN_EXCEPTIONS if e[0].startswith("distill/")} <= found


# What distill may take from training: the hard losses and the masked AUC it reports. Run
# directories, the fit loop and the teacher cache (which reads data sets) stay above it.
# Building blocks, not run code: the masked losses and metric, and the optimizers' loss
# scaling (a student keeps the precision it was saved with).
DISTILL_USES_FROM_TRAINING = {"chestkd.training.losses", "chestkd.training.optimizers"}


def test_distill_imports_no_run_code_of_training():
    rule = lambda name, module: (module.split(".")[1] == "training"  # noqa: E731
                                 and module not in DISTILL_USES_FROM_TRAINING)
    assert _offences("distill", rule) == set()


def test_evaluation_does_not_import_training():
    found = _offences("evaluation", lambda name, module: module.split(".")[1] == "training")
    assert found - KNOWN_EXCEPTIONS == set()
    assert {e for e in KNOWN_EXCEPTIONS if e[0].startswith("evaluation/")} <= found


def test_saliency_modules_live_in_their_wings():
    folder = PACKAGE / "saliency"
    assert {p.stem for p in folder.glob("*.py")} == SALIENCY_COMMANDS
    wings = {p.name for p in folder.iterdir() if (p / "__init__.py").is_file()}
    assert wings == set(SALIENCY_WINGS)
    assert {p.stem for p in (folder / "methods").glob("*.py")} == SALIENCY_METHODS | {"__init__"}


def _saliency_imports_above(wing):
    """Imports in ``saliency/<wing>/`` of a later wing or of the commands (``chestkd.saliency``
    itself is the commands' front: it re-exports the methods)."""
    allowed = SALIENCY_WINGS[:SALIENCY_WINGS.index(wing) + 1]

    def rule(name, module):
        parts = module.split(".")
        return parts[:2] == ["chestkd", "saliency"] and (len(parts) < 3 or parts[2] not in allowed)
    return _offences(f"saliency/{wing}", rule)


def test_saliency_methods_import_no_report_code():
    assert _saliency_imports_above("methods") == set()


def test_saliency_analyses_import_no_report_code():
    # Localisation, its bootstrap, the sanity checks and the display scaling serve the report
    # but never read it: the report composes them.
    assert _saliency_imports_above("analysis") == set()


def test_saliency_report_imports_no_command():
    assert _saliency_imports_above("report") == set()


def test_saliency_wings_declare_their_public_names():
    import importlib

    for wing in SALIENCY_WINGS:
        module = importlib.import_module(f"chestkd.saliency.{wing}")
        assert module.__all__, f"chestkd.saliency.{wing} has no __all__"
        for name in module.__all__:
            assert getattr(module, name) is not None, f"chestkd.saliency.{wing}.{name}"


def test_every_subpackage_declares_its_public_names():
    import importlib

    for package in SUBPACKAGES:
        tree = ast.parse((PACKAGE / package / "__init__.py").read_text())
        declared = [node for node in tree.body if isinstance(node, ast.Assign)
                    and any(getattr(t, "id", None) == "__all__" for t in node.targets)]
        assert declared, f"chestkd/{package}/__init__.py has no __all__"
        module = importlib.import_module(f"chestkd.{package.replace('/', '.')}")
        for name in module.__all__:
            if package == "recipes":  # the recipes' public names are their command modules
                assert hasattr(importlib.import_module(f"chestkd.recipes.{name}"), "main")
            else:
                assert getattr(module, name) is not None, f"chestkd.{package}.{name}"


def test_distill_declares_no_training_names():
    import chestkd.distill

    for name in chestkd.distill.__all__:
        where = getattr(getattr(chestkd.distill, name), "__module__", "") or ""
        assert not where.startswith("chestkd.training"), name


def test_every_recipe_is_a_short_composition():
    """Issue 17: a recipe reads like the keras-io KD example (what it trains, from what, what
    it reports); the steps live in the layers below it."""
    long = {path.name: n for path in (PACKAGE / "recipes").glob("*.py")
            if (n := len(path.read_text().splitlines())) > 120}
    assert not long, f"recipes over 120 lines (move their steps into chestkd/experiments): {long}"


def _owned_values():
    """(owner module, allowed values) of every option whose values a module owns."""
    from chestkd.data.augment import AUGMENTATIONS
    from chestkd.data.balance import BALANCE_MODES
    from chestkd.data.chexpert import UNCERTAINTY_POLICIES
    from chestkd.data.folder import VAL_SPLITS
    from chestkd.data.presence import IMAGES_OPTIONS
    from chestkd.data.splits import OVERLAP_MODES
    from chestkd.training import config, distribute
    from chestkd.distill import teacher_mixing
    from chestkd.distill.kd_loss import FORMULATIONS
    from chestkd.evaluation.classification import THRESHOLD_RULES
    return {"data/augment.py": AUGMENTATIONS, "data/balance.py": BALANCE_MODES,
            "data/splits.py": OVERLAP_MODES, "data/folder.py": VAL_SPLITS,
            "data/chexpert.py": UNCERTAINTY_POLICIES, "data/presence.py": IMAGES_OPTIONS,
            "training/distribute.py": distribute.MODES,
            "training/config.py": (config.OPTIMIZERS, config.WEIGHT_DECAY_MODES,
                                   config.SCHEDULES, config.CHECKPOINTS),
            "distill/kd_loss.py": FORMULATIONS,
            "distill/teacher_mixing.py": (teacher_mixing.TEACHER_SAMPLING,
                                          teacher_mixing.WEIGHT_DRAWS,
                                          teacher_mixing.TEACHER_COMBINE),
            "evaluation/classification.py": THRESHOLD_RULES}


def _copies(strings: set, values: tuple) -> bool:
    """A literal repeats an owner's values: all of them, or three or more of them."""
    values = set(values)
    return strings >= values or len(strings & values) >= 3


def _string_collections(path):
    """(line, set of strings) of every tuple, list or set literal of 2+ strings in a file."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            strings = {e.value for e in node.elts
                       if isinstance(e, ast.Constant) and isinstance(e.value, str)}
            if len(strings) >= 2:
                yield node.lineno, strings


def test_allowed_values_have_one_home_their_owner():
    """Issue 17: an option's allowed values are written once, next to the code that owns them
    (augmentations, balance modes, overlap modes, validation splits, CheXpert's uncertainty
    policies, optimizers, schedules, distribution modes, KD formulations, teacher sampling,
    weight draws and combinations, threshold rules); everything else imports them or asks
    the owner's check. A copy anywhere else in the package fails."""
    owned = [(owner, values) for owner, group in _owned_values().items()
             for values in (group if isinstance(group[0], tuple) else (group,))]
    copies = [f"{path.relative_to(PACKAGE)}:{line} repeats {owner}'s {values}"
              for path in PACKAGE.rglob("*.py")
              for line, strings in _string_collections(path)
              for owner, values in owned
              if path.relative_to(PACKAGE).as_posix() != owner and _copies(strings, values)]
    assert not copies, copies
    from chestkd.data import LOADERS
    from chestkd.training import config
    assert config._choices()["dataset"] == tuple(LOADERS)


def test_options_owned_above_training_are_checked_at_the_edge():
    """kd_loss and threshold_rule are checked by their owners (distill, evaluation) before a
    recipe's plan is printed, with the option named."""
    import pytest

    from chestkd.errors import ConfigError
    from chestkd.experiments.repeat import check_options
    from chestkd.training.config import BASE_DEFAULTS, KD_DEFAULTS

    good = {**BASE_DEFAULTS, **KD_DEFAULTS}
    check_options(good)
    for key, value, message in (
            ("kd_loss", "kl", "--kd-loss 'kl': choose one of hinton, ho2020_eq5, ho2020_eq8, "
                              "sigmoid"),
            ("threshold_rule", "otsu", "--threshold-rule 'otsu': choose one of youden, f1"),
            ("augment", "heavy", "--augment 'heavy': choose one of flip, light, strong")):
        with pytest.raises(ConfigError) as error:
            check_options({**good, key: value})
        assert str(error.value) == message
