"""The README is a front door: short, its Python example runs, its links lead somewhere."""
import re
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def python_example() -> str:
    section = README.split("## In Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_python_example_distils_and_saves_the_student(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(python_example(), "README.md", "exec"), scope)
    history = scope["history"].history
    assert len(history["hard_loss"]) == 2 and len(history["soft_loss"]) == 2
    assert np.all(np.isfinite(history["loss"]))
    import keras
    saved = keras.models.load_model(tmp_path / "student.keras")
    assert saved.count_params() == scope["student"].count_params()
    assert saved.count_params() < scope["teacher"].count_params()


def test_the_readme_is_short_and_every_link_exists():
    assert len(README.splitlines()) <= 200
    targets = re.findall(r"\]\(([^)#]+)\)", README)
    assert any(t.startswith("docs/") for t in targets)
    for target in targets:
        assert (ROOT / target).exists(), target


def test_every_docs_page_is_linked_from_the_readme_and_its_links_exist():
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"(docs/{page.name})" in README, page.name
        for target in re.findall(r"\]\(([^)#:]+)\)", page.read_text()):
            assert (page.parent / target).resolve().exists(), (page.name, target)
