"""The run folder: its layout, writing, the finish marker, resumable state and loading. The only module that knows
the paths inside a run folder.

    RUN/
      config.yaml            the resolved configuration
      plan.json              class order and forget / remain / old classes per task
      adapters/task<i>/      each task's LoRA adapter (PEFT format)
      state/                 resume state while the run is unfinished (removed when it finishes)
        task-<k>.pt          after k finished tasks: merged model, method state, rows so far, history, counts
        epoch-task<i>.pt     inside task i, when checkpoint_every > 0: the engine's state at an epoch boundary
      final.safetensors      the final merged model (+ final.json)
      final/                 an imported model (HF / torchvision / timm) in its own library's format
      record.md              the model's erasure record, one section per request (gslora.record)
      results.md|csv|json    the results; results.json is written last and marks a finished run
      plots/*.png

Every file is written atomically (temporary file, fsync, rename); resume state is kept one generation back, and a
state file that cannot be read (cut short by a power loss) is skipped in favour of the previous one.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from .config import RunConfig, config_for_file, from_dict, to_dict
from .errors import GsloraError
from .files import atomic_write, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

CONFIG, PLAN, RESULTS, FINAL = "config.yaml", "plan.json", "results.json", "final.safetensors"
RECORD = "record.md"  # the model's erasure record, for people (gslora.record)
NATIVE = "final"  # folder: the final model in the format it was imported from (models.exporters)
REPORT_FILES = ("results.csv", "results.md")
STATE, ADAPTERS, PLOTS = "state", "adapters", "plots"
# settings that may differ between a run and its resumption (they do not change the numbers)
RESUME_MAY_CHANGE = ("device", "num_workers", "eval_batch_size", "checkpoint_every")


@dataclass
class FinishedRun:
    """A finished run folder, loaded: its results, its resolved config and where its final model is."""

    folder: RunFolder
    results: dict
    config: RunConfig

    @property
    def rows(self) -> list[dict]:
        return self.results["tasks"]

    @property
    def final_checkpoint(self) -> Path:
        return self.folder.final_checkpoint


class RunFolder:
    """One run's folder. ``start`` refuses to clobber (finished: ``overwrite``; unfinished: ``resume`` or
    ``overwrite``), ``save_task_state`` / ``load_task_state`` carry a run across a crash, ``finish`` writes the final
    model and the results (``results.json`` last), ``load`` reads a finished run back."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    # --- layout ---------------------------------------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.path / CONFIG

    @property
    def results_file(self) -> Path:
        return self.path / RESULTS

    @property
    def final_checkpoint(self) -> Path:
        return self.path / FINAL

    @property
    def plots_dir(self) -> Path:
        return self.path / PLOTS

    def adapter_dir(self, task_index: int) -> Path:
        return self.path / ADAPTERS / f"task{task_index}"

    def relative(self, path: Path) -> str:
        return str(Path(path).relative_to(self.path))

    @property
    def state_dir(self) -> Path:
        return self.path / STATE

    # --- status ---------------------------------------------------------------------------------------------------
    def is_finished(self) -> bool:
        return self.results_file.is_file()

    def is_unfinished(self) -> bool:
        """A run was started here (config.yaml or resume state) but never finished."""
        return not self.is_finished() and (self.config_file.is_file() or self.state_dir.is_dir())

    def check(self, overwrite: bool = False, resume: bool = False) -> None:
        """Raise a one-sentence error when starting here would clobber a run the user did not ask to replace."""
        if self.path.exists() and not self.path.is_dir():
            raise GsloraError(f"output path {self.path} exists and is not a folder.")
        if overwrite:
            return
        if self.is_finished():
            what = "nothing is left to resume; " if resume else ""
            raise GsloraError(f"{self.path} already holds a finished run (results.json); {what}choose another --out or "
                              "pass --overwrite.")
        if self.is_unfinished() and not resume:
            raise GsloraError(f"{self.path} holds an unfinished run; pass --resume to continue it or --overwrite to "
                              "start over.")

    # --- writing --------------------------------------------------------------------------------------------------
    def start(self, config: RunConfig, plan: dict, overwrite: bool = False, resume: bool = False) -> None:
        """Check, clear an old run when ``overwrite``, and write ``config.yaml`` and ``plan.json``. With ``resume``
        an existing run's config must match ``config`` (settings that change numbers)."""
        self.check(overwrite, resume)
        if overwrite and self.path.exists():
            self.clear()
        elif resume and self.config_file.is_file():
            self._check_same_config(config)
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config_file, yaml.safe_dump(config_for_file(config), sort_keys=False))
        atomic_write_json(self.path / PLAN, plan)

    def clear(self) -> None:
        """Remove what a run writes here (other files are left alone)."""
        for name in (RESULTS, *REPORT_FILES, FINAL, "final.json", PLAN, CONFIG, RECORD):
            (self.path / name).unlink(missing_ok=True)
        for name in (ADAPTERS, PLOTS, STATE, NATIVE):
            shutil.rmtree(self.path / name, ignore_errors=True)

    def _check_same_config(self, config: RunConfig) -> None:
        try:
            saved = yaml.safe_load(self.config_file.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError:
            return  # an unreadable config.yaml is rewritten; the state's own config is checked on load
        self._compare(saved, to_dict(config))

    def _compare(self, saved: dict, now: dict) -> None:
        defaults = to_dict(RunConfig())
        for key in now:
            if key in RESUME_MAY_CHANGE:
                continue
            if key == "epochs" and key not in saved and saved.get("max_steps"):
                continue  # config.yaml shows only the budget that applies (max_steps)
            if key not in saved and now[key] == defaults.get(key):
                continue  # a setting added after the run started, left at its default
            if saved.get(key) != now[key]:
                raise GsloraError(f"the unfinished run in {self.path} used {key} = {saved.get(key)!r}, not "
                                  f"{now[key]!r}; resume it with the same settings, or pass --overwrite to start over.")

    def finish(self, results: dict, model, classes: list[str], history: list, record: list | None = None) -> None:
        """Final model (with its erasure record), ``record.md``, plots, CSV and Markdown, then ``results.json`` (the
        finish marker); then drop resume state."""
        from .models.checkpoint import save_checkpoint
        from .models.exporters import export_native, is_imported
        from .record import record_markdown
        from .report import write_run_report

        save_checkpoint(model, self.final_checkpoint, classes, history, record=record)
        results["final_checkpoint"] = FINAL
        if is_imported(model):
            export_native(model, self.path / NATIVE, classes, history, record=record)
            results["final_native"] = NATIVE
        atomic_write_text(self.path / RECORD, record_markdown(record or [], f"`{FINAL}`"))
        results["record_file"] = RECORD
        files = write_run_report(results, self.path, plots_dir=self.plots_dir)
        results["plots"] = [self.relative(p) for p in files if p.suffix == ".png"]
        atomic_write_json(self.results_file, results)
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def finish_with(self, results: dict, write) -> None:
        """A problem's own final files (:mod:`gslora.problem`; detection: its detector folder, report and plots):
        ``write(path)`` writes them, then ``results.json`` (the finish marker); then drop resume state."""
        write(self.path)
        atomic_write_json(self.results_file, results)
        shutil.rmtree(self.state_dir, ignore_errors=True)

    # --- resume state -----------------------------------------------------------------------------------------------
    def save_task_state(self, completed: int, state: dict) -> Path:
        """State after ``completed`` finished tasks; keeps the previous generation, drops older ones and the epoch
        checkpoint of the finished task."""
        path = self.state_dir / f"task-{completed}.pt"
        _save(path, {**state, "completed": completed})
        for old in self.state_dir.glob("task-*.pt"):
            k = _generation(old)
            if k is not None and k < completed - 1:
                old.unlink(missing_ok=True)
        for old in self.state_dir.glob("epoch-task*.pt"):
            old.unlink(missing_ok=True)
        return path

    def load_task_state(self, config: RunConfig) -> dict | None:
        """The newest readable task state (None: no task finished yet), checked against ``config``."""
        files = sorted((p for p in self.state_dir.glob("task-*.pt") if _generation(p) is not None),
                       key=_generation, reverse=True)
        for path in files:
            state = _load(path)
            if state is not None:
                self._compare(state["config"], to_dict(config))
                return state
        return None

    def save_epoch_state(self, task_index: int, state: dict) -> Path:
        return _save(self.state_dir / f"epoch-task{task_index}.pt", state)

    def load_epoch_state(self, task_index: int) -> dict | None:
        path = self.state_dir / f"epoch-task{task_index}.pt"
        return _load(path) if path.is_file() else None

    # --- reading a finished run -------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> FinishedRun:
        """A finished run folder; one clear error when it is not one."""
        folder = cls(path)
        if not folder.is_finished():
            extra = " (it holds an unfinished run: continue it with --resume)" if folder.is_unfinished() else ""
            raise GsloraError(f"{folder.path} is not a finished run folder{extra}; no results.json, so pass the --out "
                              "folder of a finished `gslora forget` run.")
        try:
            results = json.loads(folder.results_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise GsloraError(f"{folder.results_file} is not valid JSON ({e}).") from None
        config = from_dict(config_class(results), results.get("config") or {}, where=f"{folder.results_file} config")
        return FinishedRun(folder=folder, results=results, config=config)


def config_class(results: dict) -> type:
    """The config class of a run's results: :class:`RunConfig`, or detection's subclass of it."""
    if results.get("problem") == "detection":
        from .detection.config import DetectionConfig

        return DetectionConfig
    return RunConfig


def _generation(path: Path) -> int | None:
    try:
        return int(path.stem.split("-", 1)[1])
    except (IndexError, ValueError):
        return None


def _save(path: Path, state: dict) -> Path:
    return atomic_write(path, lambda p: torch.save(state, p))


def _load(path: Path) -> dict | None:
    """A state file, or None when it cannot be read (half-written by a crash that beat the rename's durability)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt zip, a truncated pickle: use the previous generation
        log.warning("resume state %s is unreadable (%s); using the previous one", path, e)
        return None
