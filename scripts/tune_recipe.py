"""Tune a recipe with Optuna: each trial is a config trained as lesion-grouped folds and scored out of fold.

    python scripts/tune_recipe.py --config ham10000_cpu --data $DERMALENS_DATA/ham10000_224 \\
        --out runs/tune --study-name cpu-recipe --trials 20 --folds 3 --first-folds 1 \\
        --space optimizer.lr=loguniform:1e-4:3e-3 --space training.freeze_stages=int:3:5 \\
        --space sampler.power=choice:0.5,1.0 --space loss.name=choice:focal,cross_entropy

The search space, one `--space KEY=KIND:ARGS` each (KEY a config key, as `--set` takes it):
  loguniform:LOW:HIGH   a number drawn on a log scale (Optuna's suggest_float with log=True)
  uniform:LOW:HIGH      a number (suggest_float)
  int:LOW:HIGH          an integer, both ends included (suggest_int)
  choice:A,B,...        one of the values, each read as `--set` reads it (suggest_categorical)
Every value is checked against the config before the study starts.

A trial is the config, then `--set`, then the trial's values, trained by the code `dermalens train --folds K`
runs (train_folds; the first `--first-folds` folds only, each with the share of `training.max_time` it
has in the whole K-fold job; no ensemble or student is built and nothing is evaluated on the test split:
the tuner sets training.ensemble, training.student and evaluation.after_training to false) in
OUT/trial-NNNN/, and scored by
its out-of-fold `--metric` (cv.json; balanced accuracy by default), which the study maximises. Only the
train + val pool is trained and scored: the test split is drawn as the config says and never looked at,
so choosing a trial does not touch it.

Storage: an SQLAlchemy URL (Optuna's RDBStorage), sqlite:///OUT/study.db by default. A rerun with the
same `--study-name` continues the study (the settings it was made with are stored in it, and a rerun
with others is refused). Several machines share one study through a database server: give each the same
`--storage postgresql://USER:PASSWORD@HOST/DB` (or mysql://...) and `--study-name`. A trial whose process
died is marked failed once its heartbeat is 2 x `--heartbeat` seconds old and run once more with the
same values; a trial stopped by Ctrl+C or SIGTERM is marked failed at once and queued again at the next
start. A trial run again continues in its first folder, from the folds and checkpoints it left.

Pruning: fold 1 of each trial reports its validation `--prune-on` metric after every epoch (step = epoch)
through optuna-integration's PyTorchLightningPruningCallback, and Optuna's median pruner stops a trial
whose fold 1 is below the median of the earlier trials at the same epoch (after 5 complete trials and
`--prune-warmup` epochs). Later folds report nothing: their epochs would repeat fold 1's steps.

Written after every trial (all trials of the study, from every machine): OUT/trials.csv (number, state,
value, minutes, the trial's values, folder), OUT/best.md (the best trial's values and the `dermalens
train` command that trains it with all K folds) and OUT/history.png (each trial's value, the best so far).
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import math
import shlex
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd
import sqlalchemy
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
from optuna_integration import PyTorchLightningPruningCallback

from dermalens.atomic_io import atomic_write_bytes, atomic_write_json, atomic_write_text
from dermalens.config import UNRECORDED_MEANS, ConfigError
from dermalens.config_files import load_named_config
from dermalens.data.prepare import resolve_data_path
from dermalens.training.cross_validation import SUMMARY_METRICS, train_folds
from dermalens.training.errors import TrainingInterrupted
from dermalens.training.run import with_absolute_paths

# The heartbeat and the retry callback are marked experimental (since Optuna 2.8/2.9); pyproject's floor
# is a release with the names used here.
warnings.filterwarnings("ignore", category=ExperimentalWarning)
log = logging.getLogger("tune_recipe")
KINDS = {"loguniform": "loguniform:LOW:HIGH", "uniform": "uniform:LOW:HIGH", "int": "int:LOW:HIGH",
         "choice": "choice:A,B,..."}
PRUNE_METRICS = ("val/balanced_accuracy", "val/accuracy", "val/macro_f1", "val/auc_macro")


@dataclass(frozen=True)
class Dimension:
    """One --space: a config key and the values Optuna may give it."""
    text: str
    key: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    choices: tuple[str, ...] = ()

    def suggest(self, trial: optuna.Trial) -> str:
        """The trial's value as a --set override."""
        if self.kind == "choice":
            # Kept as the text given, so the override is exactly what the command line said.
            return f"{self.key}={trial.suggest_categorical(self.key, list(self.choices))}"
        if self.kind == "int":
            return f"{self.key}={trial.suggest_int(self.key, int(self.low), int(self.high))}"
        return f"{self.key}={trial.suggest_float(self.key, self.low, self.high, log=self.kind == 'loguniform')!r}"

    @property
    def canonical(self) -> str:
        """The dimension as one text, whatever way the numbers were written (1e-4, 0.0001)."""
        if self.kind == "choice":
            return f"{self.key}=choice:{','.join(self.choices)}"
        if self.kind == "int":
            return f"{self.key}=int:{int(self.low)}:{int(self.high)}"
        return f"{self.key}={self.kind}:{self.low!r}:{self.high!r}"

    def extremes(self) -> list[str]:
        """Overrides that together try every kind of value the trials can get (for checks before the study)."""
        if self.kind == "choice":
            return [f"{self.key}={choice}" for choice in self.choices]
        if self.kind == "int":
            return [f"{self.key}={int(self.low)}", f"{self.key}={int(self.high)}"]
        return [f"{self.key}={self.low!r}", f"{self.key}={self.high!r}"]


def parse_space(text: str) -> Dimension:
    """'optimizer.lr=loguniform:1e-4:3e-3' -> Dimension; ValueError naming the text when it is malformed."""
    def bad(why: str) -> ValueError:
        return ValueError(f"--space {text!r}: {why}; expected KEY=" + " | KEY=".join(KINDS.values()))

    key, equals, spec = text.partition("=")
    kind, _, args = spec.partition(":")
    key = key.strip()
    if not equals or not key or kind not in KINDS:
        raise bad("no config key" if not equals or not key else f"unknown kind {kind!r}")
    if kind == "choice":
        choices = tuple(dict.fromkeys(part.strip() for part in args.split(",") if part.strip()))
        if len(choices) < 2:
            raise bad("a choice needs at least two different values")
        return Dimension(text, key, kind, choices=choices)
    parts = args.split(":")
    if len(parts) != 2:
        raise bad(f"{kind} takes LOW:HIGH")
    try:
        low, high = ((int if kind == "int" else float)(part) for part in parts)
    except ValueError:
        raise bad(f"LOW and HIGH must be {'integers' if kind == 'int' else 'numbers'}") from None
    if not all(map(math.isfinite, (low, high))):
        raise bad("LOW and HIGH must be finite")
    if not low < high:
        raise bad("LOW must be below HIGH")
    if kind == "loguniform" and low <= 0:
        raise bad("a log scale needs LOW > 0")
    return Dimension(text, key, kind, low, high)


# A trial trains fold models and is scored out of fold: nothing is shipped, and the test split is never
# scored (an ensemble or a student would be built and evaluated on it). Set by the tuner, refused in
# --set and --space.
TRIAL_SETTINGS = {"training.ensemble": "false", "training.student": "false", "evaluation.after_training": "false"}


def trial_config(args, overrides: list[str]) -> dict:
    """The config one trial trains: the named config, --set, the fold settings, the trial's values, then
    TRIAL_SETTINGS."""
    fixed = [f"{key}={value}" for key, value in TRIAL_SETTINGS.items()]
    return load_named_config(args.config, [*args.set, f"training.folds={args.folds}", *overrides, *fixed],
                             data=args.data)


def check_settings(args, space: list[Dimension]) -> dict:
    """Each dimension's values load as a config (key, type, range), the data is there; the base config."""
    keys = [dim.key for dim in space]
    given = [(f"--set {o}", o.partition("=")[0].strip(), o.partition("=")[2].strip().lower()) for o in args.set]
    for text, key, value in [*given, *((f"--space {dim.text}", dim.key, None) for dim in space)]:
        if key in TRIAL_SETTINGS and value != TRIAL_SETTINGS[key]:
            raise ValueError(f"{text}: the tuner sets {key}={TRIAL_SETTINGS[key]}: a trial trains fold models "
                             "only, scored out of fold, and never touches the test split")
    for dim in space:
        if keys.count(dim.key) > 1 or any(o.partition("=")[0].strip() == dim.key for o in args.set):
            raise ValueError(f"--space {dim.text!r}: {dim.key} is given twice (in --space or --set)")
        for override in dim.extremes():
            try:
                trial_config(args, [override])
            except ConfigError as error:
                raise ValueError(f"--space {dim.text!r}: {error}") from None
    base = trial_config(args, [])
    with_absolute_paths(base)   # a data path that is not there fails here, not in the first trial
    if base["data"]["format"] != "synthetic" and resolve_data_path(base) is None:
        raise ValueError("no data given: pass --data PATH or set DERMALENS_DATA")
    return base


def study_settings(args, base: dict, space: list[Dimension]) -> dict:
    """What makes trials comparable; the data path is left out (it differs between machines)."""
    config = json.loads(json.dumps(base))
    config["data"]["path"] = None
    settings = {"config": config, "folds": args.folds, "first_folds": args.first_folds, "metric": args.metric,
                "prune_on": args.prune_on, "space": sorted(dim.canonical for dim in space)}
    return json.loads(json.dumps(settings))   # as the storage gives it back (JSON)


def as_compared(recorded: dict) -> dict:
    """A study's recorded settings in today's form: studies made before `prune_on` was recorded pruned on
    the default metric, their configs hold the config's own ensemble and after_training settings (a trial
    never used them to score), and a space written another way (1e-4 or 0.0001) is the same space."""
    recorded = {"prune_on": PRUNE_METRICS[0], **json.loads(json.dumps(recorded))}
    for key in ("training.ensemble", "evaluation.after_training"):   # set by the tuner now, and never used to
        section, name = key.split(".")                                  # score a trial: a study made before
        recorded.get("config", {}).get(section, {})[name] = TRIAL_SETTINGS[key] == "true"   # recorded the config's
    for key, value in UNRECORDED_MEANS.items():   # a setting added since: what the study's trials trained with
        section, name = key.split(".")
        if "config" in recorded:
            recorded["config"].setdefault(section, {}).setdefault(name, value)
    # training.student stays as recorded: a study whose trials trained students shared the budget with them,
    # so it is not this study; the refusal says so.
    try:
        recorded["space"] = sorted(parse_space(text).canonical for text in recorded.get("space", []))
    except ValueError:
        pass   # compared as recorded
    return recorded


def differences(old, new, where: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for key in sorted(set(old) | set(new)) for d in differences(old.get(key), new.get(key),
                                                                                f"{where}{key}.")]
    return [] if old == new else [f"{where.rstrip('.')}: {old!r} then, {new!r} now"]


def shown(url: str) -> str:
    """A storage URL as messages show it: without its password."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url


def open_study(args, settings: dict) -> optuna.Study:
    """The study in --storage, made or continued; refused when it was made with other settings."""
    retry = RetryHeartbeatStaleTrialCallback(max_retry=1)
    try:
        storage = RDBStorage(args.storage, heartbeat_interval=args.heartbeat, heartbeat_stale_trial_callback=retry)
        pruner = (optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=args.prune_warmup)
                  if args.prune else optuna.pruners.NopPruner())
        study = optuna.create_study(storage=storage, study_name=args.study_name, direction="maximize",
                                    pruner=pruner, load_if_exists=True)
    except (ImportError, ValueError, sqlalchemy.exc.SQLAlchemyError) as error:   # no driver, bad URL, no server
        raise ValueError(f"--storage {shown(args.storage)}: cannot open it ({type(error).__name__}: {error})") from None
    # A sampler's random stream starts afresh in each process: offset by the trials already there, or a
    # rerun with the same --seed would draw the earlier run's first values again.
    study.sampler = optuna.samplers.TPESampler(seed=None if args.seed is None else args.seed + len(study.trials))
    recorded = study.user_attrs.get("settings")
    if recorded is None:
        study.set_user_attr("settings", settings)
    elif (recorded := as_compared(recorded)) != settings:
        changed = differences(recorded, settings)
        raise ValueError(f"study {args.study_name!r} in {shown(args.storage)} was made with other settings "
                         f"({'; '.join(changed[:6])}); give the same ones, or another --study-name")
    requeue_interrupted(study)
    return study


def requeue_interrupted(study: optuna.Study) -> None:
    """Trials stopped by Ctrl+C or SIGTERM were marked failed at once (no heartbeat goes stale): run each again."""
    trials = study.get_trials(deepcopy=False)
    retried = {number for t in trials for number in RetryHeartbeatStaleTrialCallback.retry_history(t)}
    for trial in trials:
        if trial.state == TrialState.FAIL and trial.user_attrs.get("interrupted") and trial.number not in retried:
            log.info("trial %d was interrupted: queued to run again with its values", trial.number)
            RetryHeartbeatStaleTrialCallback()(study, trial)


def trial_folder(out: Path, trial: optuna.Trial) -> Path:
    """A trial run again (after an interruption) works in the folder of the trial it repeats."""
    # The retry record is in the stored (frozen) trial's system attributes; a live Trial does not show them.
    stored = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
    first = RetryHeartbeatStaleTrialCallback.retried_trial_number(stored)
    return out / f"trial-{trial.number if first is None else first:04d}"


def objective(args, space: list[Dimension]):
    def run(trial: optuna.Trial) -> float:
        overrides = [dim.suggest(trial) for dim in space]
        folder = trial_folder(args.out, trial)
        trial.set_user_attr("folder", folder.name)
        trial.set_user_attr("interrupted", False)   # a retry inherits its original's attributes
        # Fold 1 only: every fold starts again at epoch 0, and Optuna keeps a step's first report.
        pruning = PyTorchLightningPruningCallback(trial, monitor=args.prune_on)
        try:
            result = train_folds(trial_config(args, overrides), folder, resume=folder.exists(),
                                 progress=sys.stderr.isatty(), first_folds=args.first_folds,
                                 fold_callbacks=lambda fold: [pruning] if fold == 1 else [])
        except (TrainingInterrupted, KeyboardInterrupt):
            trial.set_user_attr("interrupted", True)
            raise
        value = result.summary["out_of_fold"].get(args.metric)
        if value is None:
            raise ValueError(f"{folder / 'cv.json'} has no out-of-fold {args.metric} (a class it needs is absent)")
        return float(value)
    return run


def minutes(trial: optuna.trial.FrozenTrial) -> float | None:
    if trial.datetime_start is None or trial.datetime_complete is None:
        return None
    return round((trial.datetime_complete - trial.datetime_start).total_seconds() / 60, 2)


def trials_table(study: optuna.Study) -> pd.DataFrame:
    rows = [{"number": t.number, "state": t.state.name, "value": t.value, "minutes": minutes(t),
             "epochs_reported": len(t.intermediate_values), **t.params,
             "retry_of": RetryHeartbeatStaleTrialCallback.retried_trial_number(t), "folder": t.user_attrs.get("folder")}
            for t in study.get_trials(deepcopy=False)]
    return pd.DataFrame(rows).astype({"retry_of": "Int64"}) if rows else pd.DataFrame(rows)   # 2, not 2.0


def override_value(value) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def reproduce_command(args, params: dict) -> str:
    command = ["dermalens", "train", "--config", args.config, *(["--data", args.data] if args.data else []),
               "--folds", str(args.folds)]
    for override in [*args.set, *(f"{key}={override_value(value)}" for key, value in params.items())]:
        command += ["--set", override]
    return shlex.join(command)


def best_markdown(args, study: optuna.Study) -> str:
    trials = study.get_trials(deepcopy=False)
    counts = {state: sum(t.state == state for t in trials) for state in (TrialState.COMPLETE, TrialState.PRUNED,
                                                                         TrialState.FAIL)}
    tally = ", ".join(f"{n} {state.name.lower()}" for state, n in counts.items())
    lines = [f"# Study `{args.study_name}`: best trial", "", f"{len(trials)} trials ({tally}); each scored by its "
             f"out-of-fold {args.metric} over {args.first_folds or args.folds} of {args.folds} lesion-grouped "
             f"folds of the train + val pool. The test split was never used.", ""]
    if not counts[TrialState.COMPLETE]:
        return "\n".join(lines + ["No trial has finished yet."]) + "\n"
    best = study.best_trial
    lines += [f"Trial {best.number} ({best.user_attrs.get('folder')}/): {args.metric} {best.value:.4f}, "
              f"{minutes(best)} min.", "", "| setting | value |", "|---|---|"]
    lines += [f"| `{key}` | `{override_value(value)}` |" for key, value in best.params.items()]
    lines += ["", "The best of many noisy trials scores higher than it will again. To train it with all "
              f"{args.folds} folds (and, with the config's `training.ensemble`, ship them as one model, scored "
              "once on the test split):", "", "```bash", reproduce_command(args, best.params), "```"]
    return "\n".join(lines) + "\n"


def plot_history(study: optuna.Study, metric: str, path: Path) -> None:
    # Drawn as evaluation/plots.py draws (a Figure on Agg, no pyplot state) rather than with
    # optuna.visualization.matplotlib, which opens pyplot figures and leaves pruned trials out.
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    figure = Figure(figsize=(7, 4))
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    ax.scatter([t.number for t in done], [t.value for t in done], label="complete", color="tab:blue")
    best, running = [], -math.inf
    for t in done:
        running = max(running, t.value)
        best.append(running)
    ax.step([t.number for t in done], best, where="post", color="tab:red", label="best so far")
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
    ax.scatter([t.number for t in pruned], [t.intermediate_values[max(t.intermediate_values)] for t in pruned],
               marker="x", color="tab:gray", label="pruned (last fold-1 epoch)")
    ax.set(xlabel="trial", ylabel=f"out-of-fold {metric}", title=f"study {study.study_name}: {len(trials)} trials")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="lower right")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    atomic_write_bytes(path, buffer.getvalue())


def write_results(args, study: optuna.Study) -> None:
    atomic_write_text(args.out / "trials.csv", trials_table(study).to_csv(index=False))
    atomic_write_text(args.out / "best.md", best_markdown(args, study))
    plot_history(study, args.metric, args.out / "history.png")


def check_out(out: Path, study_name: str) -> None:
    """One study per --out: trial folders are named by trial number, which each study counts from 0."""
    record = out / "study.json"
    holder = json.loads(record.read_text()).get("study_name") if record.is_file() else study_name
    if holder != study_name:
        raise ValueError(f"--out {out} holds the trials of study {holder!r}; give another --out for "
                         f"study {study_name!r}")


def default_storage(out: Path) -> str:
    return f"sqlite:///{out / 'study.db'}"


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[Dimension]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a shipped config name or a YAML file")
    parser.add_argument("--data", help="the data set (default: the config's data.path, else $DERMALENS_DATA); its "
                        "test split is never used")
    parser.add_argument("--out", required=True, type=Path, help="trial folders, trials.csv, best.md, history.png")
    parser.add_argument("--study-name", required=True)
    parser.add_argument("--storage", help="SQLAlchemy URL of the study (default sqlite:///OUT/study.db); "
                        "postgresql://USER:PASSWORD@HOST/DB lets several machines share the study")
    parser.add_argument("--trials", type=int, default=10, help="trials this run adds (default 10)")
    parser.add_argument("--timeout", type=float, metavar="MINUTES", help="start no trial after this many minutes")
    parser.add_argument("--folds", type=int, default=3, metavar="K", help="lesion-grouped folds (default 3)")
    parser.add_argument("--first-folds", type=int, metavar="N", help="train only the first N folds per trial")
    parser.add_argument("--metric", default="balanced_accuracy", choices=SUMMARY_METRICS,
                        help="the out-of-fold figure maximised (default balanced_accuracy)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="fixed, for every trial")
    parser.add_argument("--space", action="append", required=True, metavar="KEY=KIND:ARGS",
                        help="a searched setting: " + ", ".join(KINDS.values()))
    parser.add_argument("--prune-on", default="val/balanced_accuracy", choices=PRUNE_METRICS,
                        help="the fold-1 validation metric reported per epoch (default val/balanced_accuracy)")
    parser.add_argument("--prune-warmup", type=int, default=2, metavar="EPOCHS",
                        help="no trial is pruned before this many epochs (default 2)")
    parser.add_argument("--no-prune", dest="prune", action="store_false", help="report, but never prune")
    parser.add_argument("--heartbeat", type=int, default=60, metavar="SECONDS",
                        help="a running trial's sign of life (default 60)")
    parser.add_argument("--seed", type=int, help="the sampler's seed, offset by the trials already in the study "
                        "(default random; a different one per machine)")
    args = parser.parse_args(argv)
    if args.folds < 2 or (args.first_folds is not None and not 1 <= args.first_folds <= args.folds):
        parser.error(f"need --folds >= 2 and 1 <= --first-folds <= --folds, got {args.folds} and {args.first_folds}")
    if args.trials < 0 or args.heartbeat < 1:
        parser.error("--trials must be >= 0 and --heartbeat >= 1")
    try:
        space = [parse_space(text) for text in args.space]
    except ValueError as error:
        parser.error(str(error))
    args.out = args.out.expanduser().resolve()
    args.storage = args.storage or default_storage(args.out)
    return args, space


def main(argv: list[str] | None = None) -> int:
    args, space = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = study_settings(args, check_settings(args, space), space)
        check_out(args.out, args.study_name)
        if args.storage == default_storage(args.out):
            args.out.mkdir(parents=True, exist_ok=True)   # SQLite makes the file, not its folder
        study = open_study(args, settings)
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.out / "study.json", {"study_name": args.study_name})
    except (ValueError, yaml.YAMLError) as error:   # ConfigError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 2
    log.info("study %s: %d trials so far; adding %d", args.study_name, len(study.trials), args.trials)
    try:
        study.optimize(objective(args, space), n_trials=args.trials,
                       timeout=args.timeout * 60 if args.timeout else None,
                       callbacks=[lambda study, trial: write_results(args, study)])
    except (TrainingInterrupted, KeyboardInterrupt):
        print("interrupted: the trial is marked failed and runs again when the same command is rerun",
              file=sys.stderr)
        return 130
    finally:
        write_results(args, study)
    if any(t.state == TrialState.COMPLETE for t in study.trials):
        print(f"best: trial {study.best_trial.number}, {args.metric} {study.best_value:.4f}: "
              f"{args.out / 'best.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
