"""Offline lm-eval tasks: their data builders and the rendering of their YAMLs with absolute paths.

The templates live in ``evals/tasks/*.yaml`` (one task per file, file stem = task name). They read local
JSON/JSONL through ``dataset_path: json`` + ``dataset_kwargs.data_files``, whose values hold placeholders:

* ``${RLM_DATA}``: the directory this module writes generated JSONL into (``<cache>/data``);
* ``${RLM_PRONTOQA}``: the ProntoQA data directory, read in place and never copied.

:func:`prepare_tasks` writes the data of the requested tasks and renders their templates, placeholders
replaced by absolute paths, into ``<cache>/tasks``: a directory to hand lm-eval as ``include_path``.
Nothing is downloaded. Where things are looked up (first match wins):

* cache root: argument, ``$RECURRENT_LM_EVAL_CACHE``, ``~/.cache/recurrent_lm/eval``;
* templates: argument, ``$RECURRENT_LM_TASKS_DIR``, the package's copy of ``evals/tasks``;
* ProntoQA: argument, ``$RECURRENT_LM_PRONTOQA_DIR``, ``<repo>/../shared/data/prontoqa``;
* perplexity text: argument, ``$RECURRENT_LM_PPL_SOURCE``, ``shakespeare`` (the validation plays of the
  embedded corpus); or a .txt file, or a .json/.jsonl file of ``{"text": ...}`` records.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from recurrent_lm.evaluation.errors import EvalError, TaskNotFoundError

PathLike = Union[str, os.PathLike]

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGED_TEMPLATES = Path(__file__).resolve().parents[1] / "eval_tasks"
"""evals/tasks/ as shipped in the package (a symlink to it in a checkout, a copy in a wheel)."""
OFFLINE_TAG = "rlm_offline"
"""lm-eval tag naming every offline task (``--tasks rlm_offline`` runs them all)."""
TASK_PREFIX = "rlm_"
PPL_DOC_CHARS = 4000
"""Perplexity documents are runs of whole paragraphs of about this many characters."""
PRONTOQA_FILES = ("prontoqa_valid.json", "prontoqa_test.json")


# ---------------------------------------------------------------------- locations
def default_cache_dir() -> Path:
    return Path(os.environ.get("RECURRENT_LM_EVAL_CACHE", "~/.cache/recurrent_lm/eval")).expanduser()


def template_dir(path: Optional[PathLike] = None) -> Path:
    """The directory holding the task templates; a clear error when it is missing."""
    chosen = path or os.environ.get("RECURRENT_LM_TASKS_DIR") or PACKAGED_TEMPLATES
    directory = Path(chosen).expanduser().resolve()
    if not directory.is_dir() or not any(directory.glob("*.yaml")):
        raise TaskNotFoundError(f"no task templates (*.yaml) in {directory}; reinstall recurrent_lm (the package "
                                "ships them) or point RECURRENT_LM_TASKS_DIR at a directory of task YAMLs")
    return directory


def offline_tasks(templates: Optional[PathLike] = None) -> list[str]:
    """Names of the offline tasks: the stems of the template files."""
    return sorted(p.stem for p in template_dir(templates).glob("*.yaml"))


def prontoqa_dir(path: Optional[PathLike] = None) -> Path:
    chosen = path or os.environ.get("RECURRENT_LM_PRONTOQA_DIR") or REPO_ROOT.parent / "shared" / "data" / "prontoqa"
    directory = Path(chosen).expanduser().resolve()
    missing = [name for name in PRONTOQA_FILES if not (directory / name).is_file()]
    if missing:
        raise TaskNotFoundError(f"rlm_prontoqa: {directory} lacks {missing}; pass --prontoqa_dir (or set "
                                "RECURRENT_LM_PRONTOQA_DIR) to the directory holding the ProntoQA JSON files")
    return directory


# ---------------------------------------------------------------------- selection
def requested_offline(tasks: Iterable[str], templates: Optional[PathLike] = None) -> tuple[list[str], list[str]]:
    """Split task names into (offline tasks to prepare, everything else).

    The tag ``rlm_offline`` selects every offline task. A YAML path that does not exist, or an ``rlm_``
    name that is no offline task, is a :class:`TaskNotFoundError`.
    """
    names = [t.strip() for task in tasks for t in str(task).split(",") if t.strip()]
    known = offline_tasks(templates) if any(n.startswith(TASK_PREFIX) for n in names) else []
    offline: list[str] = []
    other: list[str] = []
    for name in names:
        if name.endswith((".yaml", ".yml")):
            if not any(Path(p).is_file() for p in _glob(name)):
                raise TaskNotFoundError(f"task file {name} not found (resolved to {Path(name).absolute()})")
            other.append(name)
        elif name == OFFLINE_TAG:
            offline.extend(t for t in known if t not in offline)
        elif name.startswith(TASK_PREFIX):
            if name not in known:
                raise TaskNotFoundError(f"unknown offline task {name!r}; the offline tasks are {known} "
                                        f"(or {OFFLINE_TAG!r} for all of them)")
            if name not in offline:
                offline.append(name)
        else:
            other.append(name)
    return offline, other


def _glob(pattern: str) -> list[str]:
    import glob

    return glob.glob(pattern) or ([pattern] if Path(pattern).exists() else [])


# ---------------------------------------------------------------------- data builders
def split_documents(text: str, max_chars: int = PPL_DOC_CHARS) -> list[str]:
    """Greedy runs of whole paragraphs (blank-line separated) of about ``max_chars`` characters."""
    docs: list[str] = []
    current: list[str] = []
    size = 0
    for paragraph in re.split(r"\n\s*\n", text):
        paragraph = paragraph.strip("\n")
        if not paragraph.strip():
            continue
        if current and size + len(paragraph) > max_chars:
            docs.append("\n\n".join(current))
            current, size = [], 0
        current.append(paragraph)
        size += len(paragraph) + 2
    if current:
        docs.append("\n\n".join(current))
    return docs


def perplexity_texts(source: str = "shakespeare") -> list[str]:
    """The held-out texts of ``source``: 'shakespeare' (validation plays), a .txt, or .json/.jsonl records."""
    if source == "shakespeare":
        from recurrent_lm.data.corpus import shakespeare

        return list(shakespeare()["validation"]["text"])
    path = Path(source).expanduser()
    if not path.is_file():
        raise TaskNotFoundError(f"rlm_shakespeare_ppl: perplexity source {source!r} is no file; use 'shakespeare', "
                                "a .txt file, or a .json/.jsonl file of {\"text\": ...} records")
    if path.suffix == ".txt":
        return [path.read_text(encoding="utf-8")]
    if path.suffix in (".json", ".jsonl"):
        raw = path.read_text(encoding="utf-8")
        records = json.loads(raw) if path.suffix == ".json" else [json.loads(x) for x in raw.splitlines() if x.strip()]
        try:
            return [r["text"] for r in records]
        except (KeyError, TypeError):
            raise EvalError(f"{path}: every record needs a 'text' field") from None
    raise EvalError(f"{path}: unsupported perplexity source suffix {path.suffix!r}; use .txt, .json or .jsonl")


def perplexity_documents(source: str = "shakespeare", max_chars: int = PPL_DOC_CHARS) -> list[dict[str, str]]:
    return [{"text": doc} for text in perplexity_texts(source) for doc in split_documents(text, max_chars)]


def prosqa_problems(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` ProsQA multiple-choice rows from the one ProsQA generator (:mod:`recurrent_lm.coconut.prosqa`)."""
    from recurrent_lm.coconut.prosqa import generate_split

    return [problem.multiple_choice() for problem in generate_split(n, seed, "test")]


def arith_problems(n: int, seed: int) -> list[dict[str, Any]]:
    """Additions of two numbers in [0, 99]: {'a', 'b', 'answer'} (answer as a string)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        rows.append({"a": a, "b": b, "answer": str(a + b)})
    return rows


@dataclass(frozen=True)
class DataFile:
    """One generated JSONL file of a task: its name under ``${RLM_DATA}`` and how to build its rows."""

    name: str
    build: Callable[["Sources"], list[dict[str, Any]]]


@dataclass(frozen=True)
class Sources:
    """Where the data of the offline tasks comes from (each None = the documented default)."""

    prontoqa_dir: Optional[PathLike] = None
    ppl_source: Optional[str] = None

    @property
    def ppl(self) -> str:
        return self.ppl_source or os.environ.get("RECURRENT_LM_PPL_SOURCE") or "shakespeare"


PROSQA_SIZES = {"test": (500, 1), "validation": (50, 2)}
ARITH_SIZES = {"test": (200, 11), "validation": (20, 12)}
"""split -> (problems, seed): fixed, so every run of a task sees the same data."""

DATA_FILES: dict[str, list[DataFile]] = {
    "rlm_shakespeare_ppl": [DataFile("rlm_shakespeare_ppl_test.jsonl", lambda s: perplexity_documents(s.ppl))],
    "rlm_prosqa": [DataFile(f"rlm_prosqa_{split}.jsonl", lambda s, n=n, seed=seed: prosqa_problems(n, seed))
                   for split, (n, seed) in PROSQA_SIZES.items()],
    "rlm_arith": [DataFile(f"rlm_arith_{split}.jsonl", lambda s, n=n, seed=seed: arith_problems(n, seed))
                  for split, (n, seed) in ARITH_SIZES.items()],
    "rlm_prontoqa": [],  # read in place
}


def write_jsonl(rows: Iterable[dict[str, Any]], path: Path) -> bool:
    """Write rows as JSONL atomically; returns False (and leaves the file alone) when nothing changed."""
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return True


# ---------------------------------------------------------------------- rendering
def render_template(text: str, values: dict[str, str]) -> str:
    """Replace each ``${NAME}`` by its value, escaped for a double-quoted YAML string."""
    def substitute(match: re.Match) -> str:
        name = match.group(1)
        if name not in values:
            raise EvalError(f"task template uses ${{{name}}}, which recurrent_lm does not define")
        return json.dumps(values[name])[1:-1]

    return re.sub(r"\$\{(RLM_[A-Z_]+)\}", substitute, text)


def prepare_tasks(tasks: Optional[Iterable[str]] = None, *, cache_dir: Optional[PathLike] = None,
                  templates: Optional[PathLike] = None, sources: Optional[Sources] = None) -> Path:
    """Write the data of ``tasks`` (default: every offline task) and render their YAMLs; return the include dir.

    The returned directory holds the requested tasks' YAMLs with absolute paths (plus any rendered by
    earlier calls); give it to ``TaskManager(include_path=...)`` or ``lm_eval --include_path``.
    """
    sources = sources or Sources()
    template_root = template_dir(templates)
    wanted = offline_tasks(template_root) if tasks is None else requested_offline(tasks, template_root)[0]
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    data_dir, task_dir = (root / "data").resolve(), (root / "tasks").resolve()
    task_dir.mkdir(parents=True, exist_ok=True)
    values = {"RLM_DATA": str(data_dir)}
    for name in wanted:
        if name == "rlm_prontoqa":
            values["RLM_PRONTOQA"] = str(prontoqa_dir(sources.prontoqa_dir))
        for data_file in DATA_FILES.get(name, []):
            write_jsonl(data_file.build(sources), data_dir / data_file.name)
    for name in wanted:
        rendered = render_template((template_root / f"{name}.yaml").read_text(encoding="utf-8"), values)
        out = task_dir / f"{name}.yaml"
        if not out.is_file() or out.read_text(encoding="utf-8") != rendered:
            tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
            tmp.write_text(rendered, encoding="utf-8")
            os.replace(tmp, out)
    return task_dir


def build_task_manager(tasks: Iterable[str], *, include_path: Union[PathLike, list[PathLike], None] = None,
                       cache_dir: Optional[PathLike] = None, templates: Optional[PathLike] = None,
                       sources: Optional[Sources] = None, metadata: Optional[dict] = None):
    """A TaskManager that sees the requested offline tasks (rendered) plus ``include_path``.

    lm-eval's built-in (hub) tasks are indexed only when some requested task is not offline, which saves
    the ~25 s scan of the built-in task tree on an offline run.
    """
    from lm_eval.tasks import TaskManager

    tasks = list(tasks)
    offline, other = requested_offline(tasks, templates)
    paths: list[PathLike] = []
    if offline:
        paths.append(prepare_tasks(offline, cache_dir=cache_dir, templates=templates, sources=sources))
    if include_path is not None:
        paths.extend(include_path if isinstance(include_path, (list, tuple)) else [include_path])
    for path in paths:
        if not Path(path).exists():
            raise TaskNotFoundError(f"include_path {path} does not exist")
    needs_defaults = any(not name.endswith((".yaml", ".yml")) for name in other) and not _all_in(other, paths)
    return TaskManager(include_path=[str(p) for p in paths] or None, include_defaults=needs_defaults,
                       metadata=metadata)


def _all_in(names: list[str], paths: list[PathLike]) -> bool:
    """True when every plain task name is the stem of a YAML in one of the include paths (cheap check)."""
    plain = [n for n in names if not n.endswith((".yaml", ".yml"))]
    if not plain or not paths:
        return not plain
    stems = {p.stem for path in paths for p in Path(path).rglob("*.yaml")}
    return all(n in stems for n in plain)
