"""The package's folders are its pipeline's stages, layered: a stage imports only from the stages below it
(README, "The rest of the pipeline"). Checked on the source itself, function-level imports included, so a
shortcut import from a lower stage to a higher one (or a cycle between two) fails here, not in review."""

from __future__ import annotations

import ast
from pathlib import Path

import embrecipe

# Bottom-up, as the README's module map lists them; "" is the top level (errors, jsonio, flops, recipe, ...).
STAGES = ["", "resources", "models", "testbed", "data", "runs", "training", "evaluate", "laws", "planning",
          "sweep", "report", "pipeline", "cli"]
PACKAGE = Path(embrecipe.__file__).parent


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()) else ""


def _imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "embrecipe":
            out += [node.module] if node.module != "embrecipe" else [f"embrecipe.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.split(".")[0] == "embrecipe"]
    return out


def test_every_folder_is_a_stage_and_no_stage_imports_a_higher_one():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("_")}
    assert folders == set(STAGES) - {""}, "a new folder must take its place in STAGES and the README's map"
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(("embrecipe", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
        here = STAGES.index(_stage(module))
        upward += [f"{module} -> {target}" for target in _imports(path) if STAGES.index(_stage(target)) > here]
    assert not upward, "imports from a lower stage to a higher one:\n" + "\n".join(upward)


def test_the_top_level_names_resolve_through_the_stage_packages():
    from embrecipe import RunStore, TrainConfig, fit_laws, plan, run_recipe, train

    assert callable(plan) and callable(train) and callable(fit_laws) and callable(run_recipe)
    assert TrainConfig.__module__ == "embrecipe.training.config" and RunStore.__module__ == "embrecipe.runs.store"
