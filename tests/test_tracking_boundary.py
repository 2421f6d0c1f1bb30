"""`tracking/` is the only place that talks to MLflow: sweeps/ and trainables/ import no `mlflow`, hold no
MLflow client, and spell no MLflow name; they call the named functions of `tracking`.

Three checks from the source (no imports, milliseconds): the issue's grep (`MlflowClient|mlflow\\.|client\\(\\)\\.`)
on the code with comments removed; no `mlflow` import and no raw client (`tracking.client.client` / `call`)
imported at any depth; no `dsl.*` tag name or other name of the run schema typed as a string literal.
"""
from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GUARDED = ("sweeps", "trainables")
MLFLOW_USE = re.compile(r"MlflowClient|mlflow\.|client\(\)\.")
RAW_CLIENT = {"client", "call", "MlflowClient"}  # the bounded client itself: only tracking/ holds one
SCHEMA_LITERAL = re.compile(r"^(dsl\.[a-z_]+|ray_trial_id|mlflow\.[A-Za-z_.]+)$")


def _sources(roots=GUARDED) -> list[Path]:
    return sorted(p for root in roots for p in (ROOT / root).rglob("*.py"))


def code_without_comments(text: str) -> str:
    """The source with its comments blanked out (strings and docstrings kept, as the grep sees them)."""
    lines = text.splitlines(keepends=True)
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.COMMENT:
            (row, col), (_, end) = tok.start, tok.end
            lines[row - 1] = lines[row - 1][:col] + " " * (end - col) + lines[row - 1][end:]
    return "".join(lines)


def mlflow_use(path: Path, root: Path = ROOT) -> list[str]:
    """Where `path` uses MLflow directly: the grep's hits outside comments, `mlflow` imports, raw clients,
    and names of the run schema typed as string literals (docstrings may mention them)."""
    text = path.read_text()
    rel = path.relative_to(root)
    found = [f"{rel}:{n}: {m.group(0)!r}" for n, line in enumerate(code_without_comments(text).splitlines(), 1)
             for m in MLFLOW_USE.finditer(line)]
    tree = ast.parse(text, str(path))
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.body
                  and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"{rel}:{node.lineno}: import {a.name}" for a in node.names if a.name.split(".")[0] == "mlflow"]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if module.split(".")[0] == "mlflow":
                found.append(f"{rel}:{node.lineno}: from {module} import ...")
            elif module == "tracking.client":
                found += [f"{rel}:{node.lineno}: the raw client tracking.client.{a.name}" for a in node.names
                          if a.name in RAW_CLIENT]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings \
                and SCHEMA_LITERAL.match(node.value):
            found.append(f"{rel}:{node.lineno}: MLflow name {node.value!r} typed outside tracking/schema.py")
    return found


def test_sweeps_and_trainables_leave_mlflow_to_tracking() -> None:
    files = _sources()
    assert len(files) > 20 and any(p.name == "launcher.py" for p in files)  # the walk sees the packages
    assert [hit for p in files for hit in mlflow_use(p)] == []


def test_the_check_finds_what_it_forbids(tmp_path: Path) -> None:
    """Each kind of direct MLflow use is found; comments are not (nor a docstring's schema names: it may
    name a tag it explains, but as the issue's grep has it, not call MLflow)."""
    bad = tmp_path / "bad.py"
    bad.write_text('"""Docstrings may name `dsl.best`."""\n'
                   "# a comment may say MlflowClient\n"
                   "import mlflow\n"
                   "from mlflow.entities import Param\n"
                   "from tracking.client import call, client, redact_uri\n"
                   "def f(c):\n"
                   '    """Or `ray_trial_id`."""\n'
                   "    client().get_run('x')\n"
                   "    mlflow.set_tag('dsl.best', 'true')\n"
                   "    return {'ray_trial_id': 1}\n")
    hits = mlflow_use(bad, tmp_path)
    text = "\n".join(hits)
    assert "bad.py:9: 'mlflow.'" in text and "bad.py:8: 'client().'" in text and "MlflowClient" not in text
    assert "import mlflow" in text and "from mlflow.entities" in text
    assert "tracking.client.call" in text and "tracking.client.client" in text and "redact_uri" not in text
    assert "'dsl.best' typed" in text and "'ray_trial_id' typed" in text
    assert sum("typed outside" in h for h in hits) == 2  # the docstrings' names are not hits


def test_the_run_schema_page_names_every_tag() -> None:
    """docs/tracking.md's schema table keeps up with tracking/schema.py: every `dsl.*` tag is on the page."""
    import tracking.schema as schema

    page = (ROOT / "docs" / "tracking.md").read_text()
    tags = {v for k, v in vars(schema).items() if k.endswith("_TAG") and isinstance(v, str)}
    assert len(tags) > 25 and "dsl.best" in tags
    assert sorted(t for t in tags if f"`{t}" not in page) == []
