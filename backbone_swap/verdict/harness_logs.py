"""Other tools' per-sample outputs as ``compare`` takes them: lmms-eval's ``--log_samples`` folders and the answer
files of LLaVA's evaluation scripts.

Practitioners who already evaluate with lmms-eval have every answer on disk; reading it gives them the paired evidence
(which questions each model solves, McNemar, intervals) without running the models again.

**lmms-eval** (``python -m lmms_eval ... --output_path OUT --log_samples``) writes, per run,
``OUT/<model>/<date>_samples_<task>.jsonl`` (one line per document) and ``OUT/<model>/<date>_results.json`` (the
aggregated metrics). ``<model>`` is the last two parts of ``pretrained=`` with ``/`` made ``__``
(``lmms-lab__llava-onevision-qwen2-7b-ov``), or nothing when the model arguments name none: the files are then in
``OUT`` itself. ``<date>`` is ``%Y%m%d_%H%M%S`` (0.2 wrote ``%m%d_%H%M``). A folder given to ``compare`` may be
``OUT/<model>``, or ``OUT`` holding the files or one model's folder; with several runs of a task in it, the newest
is read, and a warning says which. lmms-eval before 0.3 wrote each run into a folder of its own,
``OUT/<date>_<suffix>_<model>_model_args_<hash>/``, holding ``results.json`` and ``<task>.json`` with the same samples
as a list under ``logs``: that folder is read too.

Each line holds ``doc_id``, ``doc_hash`` (sha256 of the document as JSON: two runs that saw different documents under
one ``doc_id`` differ here), ``target`` (the reference, as text), ``filtered_resps`` (the answer after the task's
filters: ``["text"]``, or ``"text"`` since lmms-eval 0.7 flattens single answers), ``resps`` (the raw answer, left out
when it equals the filtered one), and what the task's ``process_results`` returned for the document, one entry per
metric: a number (``exact_match`` of vqav2_val, textvqa_val, gqa, scienceqa_img: VQA accuracy or 0/1), or a dict for
aggregation, with a ``score`` (``pope_accuracy`` and the other four POPE entries, all the same score; MME's
``mme_perception_score`` or ``mme_cognition_score``, one of the two per document) or without (``submission``,
MMBench's ``gpt_eval_score`` judged by GPT only when aggregating, SEED-Bench's ``{pred, answer}``).

Correctness is the task's own per-sample score, a number in [0, 1] or a dict's ``score`` in [0, 1]; SEED-Bench's
``{pred, answer}`` is scored as its aggregation scores it (equal after lowercasing and stripping). The score is chosen
automatically when every document's scores agree (POPE's five entries; MME's one of two), else named with
``--metric TASK=KEY``. A task whose documents hold no score (MMBench, test splits with a submission only) is left out
with a warning. The logs hold no confidences and no hidden states: calibration and stability are not available.

**LLaVA** (``python -m llava.eval.model_vqa_loader`` and friends) writes one JSON line per question: ``question_id``,
``prompt``, ``text`` (the answer), ``answer_id``, ``model_id``, ``metadata``. There is no reference in it: the answers
are paired with a suite task by ``question_id`` (a benchmark task's ids are the benchmark's question ids) and scored by
the task's type, as our own evaluation's answers are.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from backbone_swap.errors import BackboneSwapError
from backbone_swap.evaluate.tasks import is_full_credit

Source = Literal["models", "lmms-eval", "llava-answers"]

SAMPLES = re.compile(r"^(?P<date>.+?)_samples_(?P<task>.+)\.jsonl$")
# lmms-eval's date ids, newest format first; a name in none of them is dated by the file's modification time
_DATES = ("%Y%m%d_%H%M%S", "%Y-%m-%dT%H-%M-%S.%f", "%Y-%m-%dT%H-%M-%S", "%m%d_%H%M")
# keys of a logged sample that are not a metric's per-sample entry
_NOT_METRICS = frozenset({"doc_id", "doc", "target", "arguments", "resps", "filtered_resps", "doc_hash",
                          "prompt_hash", "target_hash", "input", "token_counts", "input_media"})
# what common lmms-eval tasks mostly need, as the literature groups them (others: unknown, null in report.json)
_NEEDS = {"pope": "perception", "mme": "perception", "vqav2": "perception", "textvqa": "perception",
          "vizwiz_vqa": "perception", "docvqa": "perception", "ocrbench": "perception", "seedbench": "perception",
          "gqa": "reasoning", "ok_vqa": "reasoning", "scienceqa": "reasoning", "mmbench": "reasoning",
          "mmmu": "reasoning", "mmstar": "reasoning", "chartqa": "reasoning", "ai2d": "reasoning"}
LOGS_HINT = "lmms-eval writes them with --log_samples --output_path OUT, into OUT/<model>/"


def needs_of(task: str) -> str | None:
    """What an lmms-eval task mostly needs, from its name (``pope_adv`` is POPE's), or None when unknown."""
    for prefix, needs in _NEEDS.items():
        if task == prefix or task.startswith(prefix + "_"):
            return needs
    return None


# --------------------------------------------------------------------------------------------------
# What a path is
# --------------------------------------------------------------------------------------------------


def _sample_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*_samples_*.jsonl") if p.is_file() and SAMPLES.match(p.name))


def _first_record(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    return json.loads(line)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return None


def source_of(path: Path) -> Source:
    """Whether ``path`` is a model folder, an lmms-eval log folder or a LLaVA answer file; one line if none."""
    path = Path(path).expanduser()
    if not path.exists():
        raise BackboneSwapError(f"{path} does not exist", "Pass two model folders, two lmms-eval log folders, or two "
                                "LLaVA answer files")
    if path.is_file():
        record = _first_record(path)
        if isinstance(record, dict) and "question_id" in record and "text" in record:
            return "llava-answers"
        raise BackboneSwapError(
            f"{path} is a file but not an answer file of LLaVA's evaluation scripts (JSON lines with question_id "
            "and text)", "Pass two model folders, two lmms-eval log folders, or two LLaVA answer files")
    if (path / "config.json").is_file():
        return "models"
    if _sample_files(path) or any(_sample_files(sub) for sub in path.iterdir() if sub.is_dir()) or _legacy_logs(path):
        return "lmms-eval"
    if list(path.glob("*_results.json")):
        raise BackboneSwapError(f"{path} holds lmms-eval's aggregated results but no per-sample logs",
                                f"Run lmms-eval again with --log_samples ({LOGS_HINT})")
    return "models"


# --------------------------------------------------------------------------------------------------
# lmms-eval folders
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleLog:
    """One task's sample log: ``<date>_samples_<task>.jsonl``, or ``<task>.json`` of lmms-eval before 0.3 (its
    samples under ``logs``), with the run's aggregated results beside it."""

    task: str
    date: str
    path: Path
    results_path: Path

    def when(self) -> _dt.datetime:
        for form in _DATES:
            try:
                return _dt.datetime.strptime(self.date, form)
            except ValueError:
                continue
        return _dt.datetime.fromtimestamp(self.path.stat().st_mtime)

    def results(self) -> dict[str, float]:
        """The task's aggregated metrics as lmms-eval wrote them beside the samples (``<date>_results.json``):
        ``{"pope_accuracy": 0.86, ...}``, a filter other than ``none`` named in brackets; {} when there is none."""
        try:
            found = json.loads(self.results_path.read_text(encoding="utf-8")).get("results", {}).get(self.task, {})
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            return {}
        metrics = {}
        for key, value in found.items() if isinstance(found, dict) else ():
            name, comma, filter_name = str(key).partition(",")
            if (comma and "_stderr" not in name and not isinstance(value, bool) and isinstance(value, int | float)
                    and math.isfinite(value)):
                metrics[name if filter_name == "none" else f"{name} ({filter_name})"] = float(value)
        return metrics


@dataclass
class LogFolder:
    """An lmms-eval output folder: the newest sample file of each task, and what was chosen among several."""

    given: Path
    folder: Path
    logs: dict[str, SampleLog]
    notes: list[str] = field(default_factory=list)


def _legacy_logs(folder: Path) -> dict[str, SampleLog]:
    """The sample logs of a run of lmms-eval before 0.3 (``OUT/<date>_<suffix>_<model>_model_args_<hash>/``:
    ``results.json`` and ``<task>.json`` per task of its ``configs``), or {} when ``folder`` is no such run."""
    results = folder / "results.json"
    try:
        configs = json.loads(results.read_text(encoding="utf-8")).get("configs") if results.is_file() else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return {}
    if not isinstance(configs, dict):
        return {}
    return {str(task): SampleLog(str(task), folder.name, folder / f"{task}.json", results)
            for task in sorted(configs) if (folder / f"{task}.json").is_file()}


def find_logs(path: Path, side: str) -> LogFolder:
    """The sample files of the lmms-eval run in ``path`` (or in the one model folder inside it), newest per task."""
    path = Path(path).expanduser()
    legacy = _legacy_logs(path)
    if legacy and not _sample_files(path):
        return LogFolder(path, path, legacy)
    folder = path
    if not _sample_files(path):
        inside = sorted(sub for sub in path.iterdir() if sub.is_dir() and _sample_files(sub))
        if len(inside) > 1:
            raise BackboneSwapError(f"{path} holds the lmms-eval logs of several models "
                                    f"({', '.join(sub.name for sub in inside)})",
                                    f"Pass the folder of one model as {side}, e.g. {inside[0]}")
        if not inside:
            raise BackboneSwapError(f"{path} holds no lmms-eval sample logs (<date>_samples_<task>.jsonl)",
                                    LOGS_HINT)
        folder = inside[0]
    by_task: dict[str, list[SampleLog]] = {}
    for file in _sample_files(folder):
        match = SAMPLES.match(file.name)
        assert match is not None
        by_task.setdefault(match["task"], []).append(
            SampleLog(match["task"], match["date"], file, file.with_name(f"{match['date']}_results.json")))
    logs, notes = {}, []
    for task, found in sorted(by_task.items()):
        newest = max(found, key=lambda log: (log.when(), log.date))
        logs[task] = newest
        if len(found) > 1:
            notes.append(f"{side} holds {len(found)} logs of task {task} (dates "
                         f"{', '.join(sorted(log.date for log in found))}); using the newest, {newest.path.name}")
    return LogFolder(path, folder, logs, notes)


def _records(log: SampleLog) -> list[tuple[str, Any]]:
    """(where, record) of a sample log: ``line 3`` of JSON lines, ``logs[2]`` of a log before lmms-eval 0.3."""
    try:
        text = log.path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BackboneSwapError(f"{log.path} cannot be read ({e.__class__.__name__})",
                                "Check that it is lmms-eval's UTF-8 sample log") from None
    if log.path.suffix == ".json":
        try:
            logs = json.loads(text).get("logs")
        except (json.JSONDecodeError, AttributeError):
            logs = None
        if not isinstance(logs, list):
            raise BackboneSwapError(f"{log.path} is not a sample log of lmms-eval (no logs list)",
                                    "Pass the run folder lmms-eval wrote with --log_samples")
        return [(f"logs[{i}]", record) for i, record in enumerate(logs)]
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            found.append((f"line {number}", json.loads(line)))
        except json.JSONDecodeError as e:
            raise BackboneSwapError(f"{log.path} line {number} is not JSON ({e.msg})",
                                    "lmms-eval writes one JSON object a line; a file cut off (a run still going, a "
                                    "full disk) needs the run again") from None
    return found


def read_samples(log: SampleLog) -> dict[str, dict[str, Any]]:
    """The logged documents of one task by ``doc_id`` (as text), each with where it is in the file under ``_at``."""
    records: dict[str, dict[str, Any]] = {}
    for at, record in _records(log):
        if not isinstance(record, dict) or "doc_id" not in record:
            raise BackboneSwapError(f"{log.path} {at} has no doc_id, so it is no sample lmms-eval logged", LOGS_HINT)
        key = str(record["doc_id"])
        if key in records:
            raise BackboneSwapError(f"{log.path} {at}: doc_id {key} appears twice ({records[key]['_at']} too)",
                                    "Keep the log of one run per file")
        records[key] = {**record, "_at": at}
    if not records:
        raise BackboneSwapError(f"{log.path} holds no samples", "Run the task again with --log_samples")
    return records


def per_sample_score(value: Any) -> float | None:
    """A metric's per-sample entry as a score in [0, 1], or None when it holds none.

    A number in [0, 1] (a boolean as 0 or 1), or a dict with such a ``score``; SEED-Bench's ``{pred, answer}`` is
    scored as its aggregation does (the two equal after lowercasing and stripping). Scores outside [0, 1] (a GPT
    judge's 1 to 10) have no yes or no to pair, so they are none.
    """
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) and 0.0 <= value <= 1.0 else None
    if isinstance(value, dict):
        if "score" in value:
            return None if isinstance(value["score"], dict) else per_sample_score(value["score"])
        if isinstance(value.get("pred"), str) and isinstance(value.get("answer"), str):
            return float(value["pred"].lower().strip() == value["answer"].lower().strip())
    return None


def _candidates(record: dict[str, Any]) -> list[str]:
    return [key for key, value in record.items()
            if key not in _NOT_METRICS and not key.startswith("_") and per_sample_score(value) is not None]


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _where(path: Path, record: dict[str, Any]) -> str:
    return f"{path} {record['_at']} (doc_id {record['doc_id']})"


def choose_scores(task: str, sides: dict[str, tuple[Path, dict[str, dict[str, Any]]]],
                  named: str | None) -> tuple[str, dict[str, dict[str, float]]] | None:
    """The per-sample score of every document of both sides, and the metric it comes from; None when the task's
    documents hold no score at all (the caller leaves the task out).

    ``named`` (``--metric TASK=KEY``) must be a score on every document. Otherwise the choice is automatic when, on
    every document, every entry that is a score gives the same value (POPE's five; MME's one per document): the
    metric is named by the first entry every document has, else by each document's first. Documents whose scores
    disagree, or a document without one among documents with one, are refused in one line.
    """
    scores: dict[str, dict[str, float]] = {side: {} for side in sides}
    if named is not None:
        for side, (path, records) in sides.items():
            for doc, record in records.items():
                if named not in record:
                    keys = ", ".join(k for k in record if k not in _NOT_METRICS and not k.startswith("_")) or "none"
                    raise BackboneSwapError(f"{_where(path, record)} has no {named} (its per-sample entries: {keys})",
                                            f"Name one of them with --metric {task}=KEY")
                score = per_sample_score(record[named])
                if score is None:
                    raise BackboneSwapError(f"{_where(path, record)}: its {named} is {_shown(record[named])}, not a "
                                            "score in [0, 1] (a number, or a dict with a score)",
                                            f"Name a per-sample score with --metric {task}=KEY")
                scores[side][doc] = score
        return named, scores
    common: list[str] | None = None
    firsts: list[str] = []
    without: tuple[Path, dict[str, Any]] | None = None
    for side, (path, records) in sides.items():
        for doc, record in records.items():
            keys = _candidates(record)
            if not keys:
                without = without or (path, record)
                continue
            values = {key: per_sample_score(record[key]) for key in keys}
            if len(set(values.values())) > 1:
                found = ", ".join(f"{key} {value:g}" for key, value in values.items())
                raise BackboneSwapError(
                    f"lmms-eval task {task} has several per-sample scores that disagree ({_where(path, record)}: "
                    f"{found})", f"Name the one to compare with --metric {task}=KEY, one of {', '.join(keys)}")
            scores[side][doc] = values[keys[0]]
            common = keys if common is None else [key for key in common if key in keys]
            if keys[0] not in firsts:
                firsts.append(keys[0])
    if common is None:
        return None
    if without is not None:
        path, record = without
        raise BackboneSwapError(f"{_where(path, record)} holds no per-sample score, unlike the task's other "
                                f"documents ({' / '.join(firsts)})", "Check that both runs are of one task version")
    return (common[0] if common else " / ".join(firsts)), scores


def prediction_text(record: dict[str, Any]) -> str:
    """The answer a document got, after the task's filters: ``filtered_resps`` unwrapped (``["yes"]`` or, since
    lmms-eval 0.7, ``"yes"``); a log-likelihood task's several responses as their JSON."""
    value = record.get("filtered_resps", record.get("resps"))
    while isinstance(value, list) and len(value) == 1:
        value = value[0]
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


@dataclass
class PairedTask:
    """One task both runs logged, as answer lines by ``doc_id`` for the paired statistics."""

    name: str
    metric: str
    lines: dict[str, dict[str, dict[str, Any]]]  # side ("a", "b") -> doc id -> answer line
    files: dict[str, Path]
    official: dict[str, dict[str, float | None]]


def pair_logs(a: LogFolder, b: LogFolder, metrics: dict[str, str]) -> tuple[list[PairedTask], list[str]]:
    """The tasks both folders logged, paired by ``doc_id``, with warnings: tasks only one side has, tasks holding no
    per-sample score, and which file was read where a task was logged several times."""
    unknown = sorted(set(metrics) - set(a.logs) - set(b.logs))
    if unknown:
        raise BackboneSwapError(f"--metric names task {unknown[0]}, which neither log folder holds",
                                f"Their tasks: {', '.join(sorted(set(a.logs) | set(b.logs)))}")
    warnings = a.notes + b.notes
    for side, mine, other in (("A", a, b), ("B", b, a)):
        warnings += [f"task {task} is only in {side}'s logs ({mine.logs[task].path}); left out"
                     for task in sorted(set(mine.logs) - set(other.logs))]
    paired = []
    for task in sorted(set(a.logs) & set(b.logs)):
        logs = {"a": a.logs[task], "b": b.logs[task]}
        records = {side: read_samples(log) for side, log in logs.items()}
        _check_same_documents(task, logs, records)
        chosen = choose_scores(task, {side: (logs[side].path, records[side]) for side in logs}, metrics.get(task))
        if chosen is None:
            keys = sorted({k for r in records["a"].values() for k in r if k not in _NOT_METRICS and k[0] != "_"})
            warnings.append(f"task {task}: its logs hold no per-sample score in [0, 1] (their entries: "
                            f"{', '.join(keys) or 'none'}); left out")
            continue
        metric, scores = chosen
        lines = {side: {doc: {"id": doc, "prediction": prediction_text(record), "reference": record.get("target"),
                              "score": scores[side][doc], "correct": is_full_credit(scores[side][doc]),
                              "confidence": None}
                        for doc, record in records[side].items()} for side in logs}
        found = {side: log.results() for side, log in logs.items()}
        official = {name: {"a": found["a"].get(name), "b": found["b"].get(name)}
                    for name in {**found["a"], **found["b"]}}
        paired.append(PairedTask(task, metric, lines, {side: log.path for side, log in logs.items()}, official))
    if not paired:
        raise BackboneSwapError(f"{a.given} and {b.given} hold no task with per-sample scores in common "
                                f"(A: {', '.join(a.logs) or 'none'}; B: {', '.join(b.logs) or 'none'})",
                                "Compare logs of the same lmms-eval tasks")
    return paired, warnings


def _check_same_documents(task: str, logs: dict[str, SampleLog], records: dict[str, dict[str, Any]]) -> None:
    """Both runs logged the same documents: the same doc_ids, and under each the same doc_hash."""
    for side, other in (("a", "b"), ("b", "a")):
        missing = sorted(set(records[side]) - set(records[other]), key=lambda d: (len(d), d))
        if missing:
            raise BackboneSwapError(
                f"task {task}: the two runs logged different documents; {logs[other].path} lacks {len(missing)} "
                f"doc_ids of {logs[side].path} (e.g. {', '.join(missing[:3])})",
                "Run both with the same task and --limit")
    for doc, record in records["a"].items():
        hash_a, hash_b = record.get("doc_hash"), records["b"][doc].get("doc_hash")
        if hash_a and hash_b and hash_a != hash_b:
            raise BackboneSwapError(
                f"task {task}, doc_id {doc}: the two runs saw different documents (doc_hash {str(hash_a)[:12]} in "
                f"{logs['a'].path}, {str(hash_b)[:12]} in {logs['b'].path})",
                "Compare runs of the same task version and data set")


# --------------------------------------------------------------------------------------------------
# LLaVA's answer files
# --------------------------------------------------------------------------------------------------


def read_llava_answers(path: Path) -> dict[str, str]:
    """``{question_id: text}`` of an answer file of LLaVA's evaluation scripts, checked line by line."""
    path = Path(path).expanduser()
    answers: dict[str, str] = {}
    lines: dict[str, int] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BackboneSwapError(f"{path} cannot be read ({e.__class__.__name__})",
                                "Pass the answers file LLaVA's script wrote (--answers-file)") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise BackboneSwapError(f"{path} line {number} is not JSON ({e.msg})",
                                    "LLaVA's scripts write one JSON object a line; merge the chunks with cat") from None
        if not isinstance(record, dict) or "question_id" not in record or not isinstance(record.get("text"), str):
            raise BackboneSwapError(f"{path} line {number} lacks question_id or a text answer",
                                    "Pass the answers file LLaVA's script wrote (--answers-file)")
        key = str(record["question_id"])
        if key in answers:
            raise BackboneSwapError(
                f"{path} line {number}: question_id {key} appears twice (line {lines[key]} too)",
                "Keep one answer a question (LLaVA's MMBench script writes one line per circular round_id)")
        answers[key], lines[key] = record["text"], number
    if not answers:
        raise BackboneSwapError(f"{path} holds no answers", "Pass the answers file LLaVA's script wrote")
    return answers


_LETTER = re.compile(r"^\(?([A-Z])(?:[.)]|$)")


def option_answer(item: dict[str, Any], text: str) -> str:
    """A multiple-choice answer as the option's text: LLaVA's prompts ask for the option's letter ("A"; "B. red" and
    "(C)" read as its ScienceQA evaluation reads them); an answer that already is an option, or holds no letter of
    one, stays as it is."""
    choices = [str(choice) for choice in item.get("choices") or []]
    stripped = text.strip()
    if stripped in choices:
        return stripped
    match = _LETTER.match(stripped)
    if match and ord(match[1]) - ord("A") < len(choices):
        return choices[ord(match[1]) - ord("A")]
    return text
