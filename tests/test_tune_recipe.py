"""scripts/tune_recipe.py: an Optuna study of tiny synthetic trials, in SQLite, continued and retried.

Each trial trains one fold of two at 64 px for two epochs of two batches (seconds on a quiet machine).
"""
from __future__ import annotations

import json
import shlex
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest

from dermalens.config_files import load_named_config

# The script silences Optuna's "experimental" notes on the heartbeat API; pytest resets filters per test.
pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]
pytest.importorskip("optuna_integration", reason="the tune extra (pip install dermalens[tune]) is not installed")
import optuna  # noqa: E402
from optuna.storages import RDBStorage  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from support.scripts import load_script  # noqa: E402

STUDY = "tiny"
TINY = {
    "data.format": "synthetic", "data.synthetic_per_class": 21, "data.cache_dir": "null",
    "model.image_size": 64, "model.pretrained": "none", "training.max_epochs": 2, "training.limit_train_batches": 2,
    "training.cached_views": 0, "training.progress_bar": "false", "training.num_workers": 0,
    "training.max_time": "null", "training.precision": "32-true", "training.batch_size": 16,
    "sampler.samples_per_class": 8, "evaluation.tta": "false", "training.log_every_n_steps": 1,
}
SPACE = ["optimizer.lr=loguniform:1e-4:3e-3", "sampler.power=choice:0.5,1.0"]


tune = load_script("tune_recipe")


def arguments(out: Path, trials: int, space=SPACE, sets=TINY, study: str = STUDY, *extra: str) -> list[str]:
    args = ["--config", "demo", "--out", str(out), "--study-name", study, "--trials", str(trials),
            "--folds", "2", "--first-folds", "1", "--seed", "0", *extra]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    for text in space:
        args += ["--space", text]
    return args


def run(argv: list[str]) -> int:
    try:
        return tune.main(argv)
    except SystemExit as stop:   # argparse's refusals
        return stop.code


def storage(out: Path, heartbeat: int | None = None) -> RDBStorage:
    return RDBStorage(f"sqlite:///{out / 'study.db'}", heartbeat_interval=heartbeat)


def in_range(trial: optuna.trial.FrozenTrial) -> bool:
    return 1e-4 <= trial.params["optimizer.lr"] <= 3e-3 and trial.params["sampler.power"] in ("0.5", "1.0")


@pytest.fixture(scope="module")
def tuned(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tune") / "out"
    assert run(arguments(out, 2)) == 0
    return out


def test_two_trials_are_trained_by_cross_validation_and_scored_out_of_fold(tuned: Path):
    study = optuna.load_study(study_name=STUDY, storage=storage(tuned))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    for trial in study.trials:
        assert 0.0 <= trial.value <= 1.0 and in_range(trial)
        # Fold 1 reported its validation balanced accuracy to the trial after each of its 2 epochs.
        assert sorted(trial.intermediate_values) == [0, 1]
        assert all(0.0 <= v <= 1.0 for v in trial.intermediate_values.values())
        folder = tuned / trial.user_attrs["folder"]
        assert folder.name == f"trial-{trial.number:04d}"
        cv = json.loads((folder / "cv.json").read_text())
        assert cv["out_of_fold"]["balanced_accuracy"] == pytest.approx(trial.value)
        assert cv["folds_trained"] == 1
        # Scored on fold 1 of the pool only: the test split is in no fold and is never predicted.
        split = pd.read_csv(folder / "split.csv")
        assert cv["images"] == int((split["fold"] == 1).sum())
        assert (split.loc[split["split"] == "test", "fold"] == 0).all() and (split["split"] == "test").any()
        config = (folder / "fold-1" / "config.yaml").read_text()
        assert f"lr: {trial.params['optimizer.lr']!r}" in config
    table = pd.read_csv(tuned / "trials.csv")
    assert list(table["number"]) == [0, 1] and set(table["state"]) == {"COMPLETE"}
    assert table["value"].tolist() == pytest.approx([t.value for t in study.trials])
    assert (tuned / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_best_md_gives_the_command_that_trains_the_best_trial_with_all_folds(tuned: Path):
    best = optuna.load_study(study_name=STUDY, storage=storage(tuned)).best_trial
    text = (tuned / "best.md").read_text()
    assert f"Trial {best.number} " in text
    (line,) = [line for line in text.splitlines() if line.startswith("dermalens train ")]
    argv = shlex.split(line)
    assert argv[argv.index("--folds") + 1] == "2"
    sets = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--set"]
    assert f"optimizer.lr={best.params['optimizer.lr']!r}" in sets
    assert f"sampler.power={best.params['sampler.power']}" in sets
    # The command's settings are the best trial's (the ensemble over all folds apart).
    config = load_named_config(argv[argv.index("--config") + 1], sets)
    trained = json.loads(json.dumps(tune.trial_config(tune.parse_args(arguments(tuned, 0))[0],
                                                      [f"optimizer.lr={best.params['optimizer.lr']!r}",
                                                       f"sampler.power={best.params['sampler.power']}"])))
    for section in ("model", "optimizer", "sampler", "loss", "augmentation"):
        assert config[section] == trained[section]


def test_a_rerun_continues_the_study(tuned: Path, tmp_path: Path):
    out = shutil.copytree(tuned, tmp_path / "out")
    before = optuna.load_study(study_name=STUDY, storage=storage(out)).trials
    assert run(arguments(out, 1)) == 0
    trials = optuna.load_study(study_name=STUDY, storage=storage(out)).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert [(t.params, t.value) for t in trials[:2]] == [(t.params, t.value) for t in before]
    assert 0.0 <= trials[2].value <= 1.0 and (out / "trial-0002" / "cv.json").is_file()
    # The same --seed in a new process does not draw the first run's values again.
    assert trials[2].params["optimizer.lr"] not in [t.params["optimizer.lr"] for t in before]
    assert list(pd.read_csv(out / "trials.csv")["number"]) == [0, 1, 2]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")   # the dead trial is made by hand
def test_a_trial_of_a_dead_process_is_failed_and_run_again_with_its_values(tuned: Path, tmp_path: Path):
    out = shutil.copytree(tuned, tmp_path / "out")
    beating = storage(out, heartbeat=1)
    study = optuna.load_study(study_name=STUDY, storage=beating)
    dead = study.ask()   # left RUNNING, its last heartbeat older than the grace period (2 x 1 s)
    values = {"optimizer.lr": dead.suggest_float("optimizer.lr", 1e-4, 3e-3, log=True),
              "sampler.power": dead.suggest_categorical("sampler.power", ["0.5", "1.0"])}
    beating.record_heartbeat(dead._trial_id)
    time.sleep(3)
    assert run(arguments(out, 1, SPACE, TINY, STUDY, "--heartbeat", "1")) == 0
    trials = optuna.load_study(study_name=STUDY, storage=storage(out)).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 + [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[3].params == values and trials[3].user_attrs["folder"] == "trial-0002"
    assert (out / "trial-0002" / "cv.json").is_file()
    assert pd.read_csv(out / "trials.csv")["retry_of"].tolist()[3] == 2


def test_an_interrupted_trial_is_queued_once_more_with_its_values():
    study = optuna.create_study(storage=RDBStorage("sqlite:///:memory:"), direction="maximize")
    distribution = optuna.distributions.FloatDistribution(1e-4, 3e-3, log=True)
    study.add_trial(optuna.create_trial(state=TrialState.FAIL, params={"optimizer.lr": 1e-3},
                                        distributions={"optimizer.lr": distribution},
                                        user_attrs={"interrupted": True}))
    study.add_trial(optuna.create_trial(state=TrialState.FAIL, params={"optimizer.lr": 2e-3},
                                        distributions={"optimizer.lr": distribution},
                                        user_attrs={"interrupted": False}))   # an error, not a stop
    tune.requeue_interrupted(study)
    tune.requeue_interrupted(study)   # a second start queues nothing more
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [(t.params, t.system_attrs["retry_history"]) for t in waiting] == [({"optimizer.lr": 1e-3}, [0])]


def test_a_rerun_with_other_settings_is_refused_and_trains_nothing(tuned: Path, tmp_path: Path, capsys):
    out = shutil.copytree(tuned, tmp_path / "out")
    assert run(arguments(out, 1, SPACE, {**TINY, "training.max_epochs": 3})) == 2
    assert "training.max_epochs: 2 then, 3 now" in capsys.readouterr().err
    assert run(arguments(out, 1, SPACE, TINY, "another")) == 2
    assert "holds the trials of study 'tiny'" in capsys.readouterr().err
    assert len(optuna.load_study(study_name=STUDY, storage=storage(out)).trials) == 2
    assert not (out / "trial-0002").exists()


@pytest.mark.parametrize("space, why", [
    ("optimizer.lr=loguniform:0:1e-3", "a log scale needs LOW > 0"),
    ("optimizer.lr=gaussian:1e-4:1e-3", "unknown kind 'gaussian'"),
    ("optimizer.lr=uniform:1e-3", "uniform takes LOW:HIGH"),
    ("training.freeze_stages=int:5:3", "LOW must be below HIGH"),
    ("sampler.power=choice:0.5", "at least two different values"),
    ("optimizer.lrr=loguniform:1e-4:1e-3", "unknown config key 'optimizer.lrr'"),
    ("loss.name=choice:focal,ce", "must be one of focal"),
    ("training.freeze_stages=uniform:3:5", "must be an integer"),
])
def test_a_malformed_space_is_refused_naming_it(tmp_path: Path, capsys, space: str, why: str):
    out = tmp_path / "out"
    assert run(arguments(out, 1, [space])) == 2
    err = capsys.readouterr().err
    assert f"--space {space!r}" in err and why in err
    assert not out.exists()


def test_a_rerun_with_another_pruning_metric_is_refused_and_one_written_otherwise_is_not(tuned: Path,
                                                                                        tmp_path: Path, capsys):
    out = shutil.copytree(tuned, tmp_path / "out")
    assert run(arguments(out, 1, SPACE, TINY, STUDY, "--prune-on", "val/accuracy")) == 2
    assert "prune_on: 'val/balanced_accuracy' then, 'val/accuracy' now" in capsys.readouterr().err
    assert len(optuna.load_study(study_name=STUDY, storage=storage(out)).trials) == 2
    same_space = ["optimizer.lr=loguniform:0.0001:0.003", "sampler.power=choice:0.5,1.0"]   # 1e-4:3e-3
    assert run(arguments(out, 1, same_space)) == 0
    assert len(optuna.load_study(study_name=STUDY, storage=storage(out)).trials) == 3


@pytest.mark.parametrize("given", [["--set", "training.student=true"], ["--set", "evaluation.after_training=true"],
                                   ["--space", "training.ensemble=choice:true,false"]])
def test_settings_that_would_score_the_test_split_are_refused(tmp_path: Path, capsys, given: list[str]):
    out = tmp_path / "out"
    assert run([*arguments(out, 1), *given]) == 2
    err = capsys.readouterr().err
    assert "the tuner sets" in err and "never touches the test split" in err
    assert not out.exists()
    args = tune.parse_args(arguments(out, 1))[0]
    trial = tune.trial_config(args, [])
    assert (trial["training"]["ensemble"], trial["training"]["student"], trial["evaluation"]["after_training"]) \
        == (False, False, False)


def test_a_trial_of_the_first_fold_gets_that_folds_share_of_the_budget(tmp_path: Path):
    """With two folds and a 30-minute job, fold 1 trains for at most about 15 minutes, as in the whole job:
    the command best.md gives then trains each fold as the trial did."""
    out = tmp_path / "out"
    assert run(arguments(out, 1, SPACE, {**TINY, "training.max_time": "00:00:30:00"})) == 0
    fold = load_named_config(str(out / "trial-0000" / "fold-1" / "config.yaml"))
    days, hours, minutes, seconds = map(int, str(fold["training"]["max_time"]).split(":"))
    assert 14 * 60 <= ((days * 24 + hours) * 60 + minutes) * 60 + seconds <= 15 * 60


def test_a_study_made_before_the_tuner_set_its_trial_settings_continues(tuned: Path, tmp_path: Path):
    """Its recorded config held evaluation.after_training: true (the config's), which the tuner now sets to
    false and refuses in --set: such a study could neither continue nor be given the same settings."""
    out = shutil.copytree(tuned, tmp_path / "out")
    study = optuna.load_study(study_name=STUDY, storage=storage(out))
    recorded = study.user_attrs["settings"]
    recorded["config"]["evaluation"]["after_training"] = True
    del recorded["prune_on"]
    del recorded["config"]["sampler"]["source_power"]   # a setting added since, at the value its trials had
    study.set_user_attr("settings", recorded)
    assert run(arguments(out, 1)) == 0
    assert len(optuna.load_study(study_name=STUDY, storage=storage(out)).trials) == 3
