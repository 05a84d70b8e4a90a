"""The layering of chestkd/__init__.py: lower layers never import higher ones."""
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
