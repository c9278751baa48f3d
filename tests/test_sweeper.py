"""Optuna sweeps as Hydra multiruns: grammar, simplex, resume, pruning, failures, MLflow, export.

The end-to-end part runs `python -m transferlab.sweep -m hparams_search=lr_freeze_wd` on the tiny
config in a throw-away project (data + pre-training by `dvc repro pretrain-image`). Its search is a seeded grid
over seven learning rates chosen so that every outcome is known in advance:

    0.03 0.05 0.07 0.1   learn               -> COMPLETE, or PRUNED when behind the median
    1e-6                 never leaves chance -> PRUNED (last in the grid, after >= 2 completions)
    1e9                  diverges            -> FAIL (TrainingError: train/loss became nan/inf)
    -1                   invalid             -> FAIL (ConfigError: finetune.lr=-1.0 must be > 0)

with n_trials=5 (COMPLETE + PRUNED) and 2 failures allowed. The first sweep process is killed
(SIGKILL) once two trials have finished; re-running the same command must finish the study.
"""

from __future__ import annotations

import math
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from hydra_plugins.transferlab_optuna_sweeper._export import experiment_yaml
from hydra_plugins.transferlab_optuna_sweeper._space import (
    SearchSpaceError,
    inverse_stick_breaking,
    parse_search_space,
    stick_breaking,
)
from hydra_plugins.transferlab_optuna_sweeper._study import trial_seed, worker_id, worker_is_dead
from tests.conftest import BIN, ROOT, make_project, project_env, run

optuna.logging.set_verbosity(optuna.logging.WARNING)

SWEEP = [sys.executable, "-m", "transferlab.sweep", "-m"]
EPOCHS = 5
N_TRIALS = 5
GRID = [0.03, 0.05, 0.07, 0.1, 1e-6, 1e9, -1]
MAIN = [
    "hparams_search=lr_freeze_wd",
    "+debug=tiny",
    f"finetune.max_steps.image={3 * EPOCHS}",  # 3 steps per epoch: EPOCHS epochs
    "trainer.num_threads=1",
    "finetune.freeze_depth=2",
    "finetune.weight_decay=0.01",
    "finetune.lr=choice(0.03,0.05,0.07,0.1,1e-6,1e9,-1)",
    "hydra/sweeper/sampler=grid",
    "hydra.sweeper.sampler.seed=0",
    f"hydra.sweeper.n_trials={N_TRIALS}",
    "hydra.sweeper.max_failure_rate=0.4",
    "hydra.sweeper.pruner.kwargs.n_startup_trials=2",
    "hydra.sweeper.pruner.kwargs.n_warmup_steps=1",
    "hydra.sweeper.study_name=main",
    "sweep.seeds=[0]",  # one seed per trial: the kill/resume and pruning tests time epochs
]


# --------------------------------------------------------------------------- grammar


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("k=tag(log, interval(1e-5, 1e-1))", FloatDistribution(1e-5, 0.1, log=True)),
        ("k=interval(0, 0.5)", FloatDistribution(0.0, 0.5)),
        ("k=tag(int, interval(1, 8))", IntDistribution(1, 8)),
        ("k=tag(log, int, interval(1, 64))", IntDistribution(1, 64, log=True)),
        ("k=range(0, 5)", IntDistribution(0, 4)),  # Hydra's range excludes stop
        ("k=range(2, 11, 3)", IntDistribution(2, 8, step=3)),  # 2, 5, 8
        ("k=range(10, 0, -4)", IntDistribution(2, 10, step=4)),  # 10, 6, 2
        ("k=tag(log, range(1, 65))", IntDistribution(1, 64, log=True)),
        ("k=range(0.1, 0.5, 0.1)", FloatDistribution(0.1, 0.4, step=0.1)),
        ("k=adam,adamw,sgd", CategoricalDistribution(["adam", "adamw", "sgd"])),
        ("k=choice(1, 2.5, true, abc)", CategoricalDistribution([1, 2.5, True, "abc"])),
        ("k=choice([8,16],[16,32])", CategoricalDistribution(["[8,16]", "[16,32]"])),
    ],
)
def test_override_grammar_maps_to_optuna_distributions(override: str, expected) -> None:
    space = parse_search_space({}, [override])
    assert space.fixed == [] and len(space.params) == 1
    assert space.params[0].distribution == expected


def plugin_distribution(text: str):
    """What hydra-optuna-sweeper 1.2 builds for one sweep override (its documented mapping, in
    Optuna 5's distribution classes): a choice or a shuffled range → categorical of the values;
    a range → int (all-int bounds) or stepped float, stop *included*; an interval → int when both
    bounds are ints (Hydra's int() cast), log with tag(log)."""
    ov = OverridesParser.create().parse_override(text)
    v = ov.value()
    if ov.is_choice_sweep() or (ov.is_range_sweep() and v.shuffle):
        return CategoricalDistribution([Override._convert_value(x) for x in ov.sweep_iterator()])
    if ov.is_range_sweep():
        if all(isinstance(x, int) for x in (v.start, v.stop, v.step)):
            return IntDistribution(v.start, v.stop, step=v.step)
        return FloatDistribution(v.start, v.stop, step=v.step)
    log = "log" in v.tags
    if isinstance(v.start, int) and isinstance(v.end, int):
        return IntDistribution(v.start, v.end, log=log)
    return FloatDistribution(v.start, v.end, log=log)


@pytest.mark.parametrize(
    "override",
    [
        "k=int(interval(0, 4))",
        "k=tag(log, int(interval(1, 64)))",
        "k=int(tag(log, interval(1, 64)))",
        "k=float(interval(0, 4))",
        "k=interval(0, 1)",
        "k=tag(log, interval(1e-5, 1e-1))",
        "k=str(choice(1, 2))",
        "k=bool(choice(0, 1))",
        "k=int(choice(1.0, 2.0))",
        "k=float(choice(1, 2))",
        "k=shuffle(a, b, c)",
        "k=shuffle(choice(1, 2, 3))",
        "k=shuffle(range(1, 4))",
        "k='x','y y'",
        "model/text=minilm,transformer",
    ],
)
def test_every_form_of_hydras_optuna_grammar_builds_the_plugins_distribution(override: str) -> None:
    (param,) = parse_search_space({}, [override]).params
    theirs = plugin_distribution(override)
    if "shuffle" in override:  # the plugin keeps Hydra's shuffled order; the values are the same
        assert isinstance(param.distribution, CategoricalDistribution)
        assert sorted(param.distribution.choices) == sorted(theirs.choices)
    else:
        assert param.distribution == theirs


@pytest.mark.parametrize(
    ("override", "last"),
    [("k=range(0, 5)", 4), ("k=float(range(1, 5))", 4.0), ("k=range(2, 11, 3)", 8)],
)
def test_range_excludes_its_stop_where_the_plugin_includes_it(override: str, last) -> None:
    """The one deliberate difference (docs/sweeps.md): range() means what Hydra's basic sweeper
    and Python mean, its stop left out."""
    (param,) = parse_search_space({}, [override]).params
    theirs = plugin_distribution(override)
    assert param.distribution.high == last and theirs.high == last + theirs.step
    assert param.distribution.low == theirs.low and param.distribution.step == theirs.step


def test_deletions_and_quoted_strings_pass_to_every_trial_unchanged() -> None:
    space = parse_search_space({}, ["~finetune.layerwise_decay", "~a.b=3", "k='x, y'", "j=1,2"])
    assert space.fixed == ["~finetune.layerwise_decay", "~a.b=3", "k='x, y'"]
    assert [p.name for p in space.params] == ["j"]


def test_search_space_merges_config_and_command_line() -> None:
    space = parse_search_space(
        {"finetune.lr": "tag(log, interval(1e-5, 1e-1))", "finetune.max_steps.image": 7},
        ["finetune.lr=choice(0.01,0.1)", "+debug=tiny", "model/image=cnn,cnn2", "+x.y=1,2"],
    )
    by_name = {p.name: p for p in space.params}
    # the command line wins for the same key; fixed values pass through unchanged
    assert by_name["finetune.lr"].distribution == CategoricalDistribution([0.01, 0.1])
    assert space.fixed == ["finetune.max_steps.image=7", "+debug=tiny"]
    # prefixes and config groups are kept in the overrides a trial gets
    assert by_name["model/image"].override("cnn2") == "model/image='cnn2'"
    assert by_name["x.y"].override(2) == "+x.y=2"
    assert by_name["finetune.lr"].override(0.1) == "finetune.lr=0.1"
    # strings are quoted so that '1.5' stays a string
    assert parse_search_space({}, ["k='1.5','a b'"]).params[0].override("1.5") == "k='1.5'"


@pytest.mark.parametrize(
    "bad",
    [
        "k=tag(log, interval(0, 1))",  # log needs a positive start
        "k=tag(log, range(0, 10, 2))",  # Optuna: log and step do not combine
        "k=tag(log, choice(1, 2))",
        "k=tag(lgo, interval(1, 2))",  # unknown tag (typo)
        "k=range(5, 5)",  # empty
        "k=interval(2, 1)",
        "k=choice(1, 1)",
        "k=simplex(a)",
    ],
)
def test_bad_sweeps_fail_with_one_line(bad: str) -> None:
    with pytest.raises(SearchSpaceError) as info:
        parse_search_space({}, [bad])
    assert "\n" not in str(info.value).strip()


def test_float_values_round_trip_exactly_through_overrides() -> None:
    space = parse_search_space({}, ["k=tag(log, interval(1e-5, 1e-1))"])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(20):
        trial = study.ask()
        (text,) = space.suggest(trial)
        assert float(text.split("=", 1)[1]) == trial.params["k"]
        study.tell(trial, 0.0)


def test_grid_search_space_enumerates_choices_and_ranges() -> None:
    space = parse_search_space({}, ["a=range(0, 3)", "b=x,y", "c=range(0.5, 1.0, 0.25)"])
    assert space.grid() == {"a": [0, 1, 2], "b": ["x", "y"], "c": [0.5, 0.75]}
    with pytest.raises(SearchSpaceError, match="grid sampler"):
        parse_search_space({}, ["a=interval(0, 1)"]).grid()


# --------------------------------------------------------------------------- simplex


def test_stick_breaking_lands_on_the_simplex_and_inverts() -> None:
    rng = np.random.default_rng(0)
    for k in (2, 3, 5):
        for u in rng.uniform(size=(50, k - 1)):
            w = stick_breaking(list(u))
            assert len(w) == k and min(w) >= 0 and math.isclose(sum(w), 1.0, abs_tol=1e-12)
            assert np.allclose(inverse_stick_breaking(w), u, atol=1e-9)
    # hand-computed, K = 3: v1 = 1 − (1 − u1)^(1/2), v2 = u2
    w = stick_breaking([0.75, 0.5])
    assert np.allclose(w, [0.5, 0.25, 0.25])
    assert stick_breaking([0.0, 0.0]) == [0.0, 0.0, 1.0]


def test_stick_breaking_of_uniform_numbers_is_the_flat_dirichlet() -> None:
    # Under Dirichlet(1,…,1) every weight is Beta(1, K−1): mean 1/K, CDF 1 − (1 − x)^(K−1).
    k, n = 4, 20000
    u = np.random.default_rng(1).uniform(size=(n, k - 1))
    w = np.array([stick_breaking(list(row)) for row in u])
    assert np.allclose(w.mean(axis=0), 1 / k, atol=0.006)
    assert np.allclose(w.var(axis=0), (k - 1) / (k**2 * (k + 1)), atol=0.002)
    for i in range(k):
        x = np.sort(w[:, i])
        ks = np.max(np.abs(np.arange(1, n + 1) / n - (1 - (1 - x) ** (k - 1))))
        assert ks < 0.015, (i, ks)  # the 1% critical value is 1.63/sqrt(n) = 0.0115


def test_simplex_override_writes_one_weight_per_item() -> None:
    space = parse_search_space(
        {"finetune.multitask.weights": "simplex(fmnist, digits, textures)"}, []
    )
    (simplex,) = space.simplexes
    assert simplex.param_names == [
        "finetune.multitask.weights:stick0",
        "finetune.multitask.weights:stick1",
    ]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    overrides = space.suggest(trial)
    keys = [o.split("=")[0] for o in overrides]
    assert keys == [f"finetune.multitask.weights.{t}" for t in ("fmnist", "digits", "textures")]
    assert math.isclose(sum(float(o.split("=")[1]) for o in overrides), 1.0, abs_tol=1e-12)
    assert set(space.distributions()) == set(simplex.param_names)
    assert space.overrides_for(trial.params) == overrides
    with pytest.raises(SearchSpaceError, match="simplex"):
        space.grid()


# --------------------------------------------------------------------------- small pieces


def test_trial_seeds_are_reproducible_and_distinct() -> None:
    seeds = [trial_seed(1234, n) for n in range(1000)]
    assert seeds == [trial_seed(1234, n) for n in range(1000)]
    assert len(set(seeds)) == 1000
    assert trial_seed(None, 3) is None


def test_worker_liveness() -> None:
    me = worker_id()
    assert not worker_is_dead(me)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    host, _, _ = me.rsplit(":", 2)
    assert worker_is_dead(f"{host}:{proc.pid}:1")  # gone (or a recycled pid: other start time)
    assert not worker_is_dead(f"elsewhere:{proc.pid}:1")  # another host: unknown, never reaped


def test_experiment_export_separates_values_groups_and_compositions() -> None:
    trial = SimpleNamespace(number=4, values=[0.5])
    text = experiment_yaml(
        "s1",
        trial,
        ["val/acc"],
        "sqlite:///optuna.db",
        [
            "+debug=tiny",
            "hparams_search=lr_freeze_wd",
            "sweep.target=digits",
            "finetune.max_steps.image=9",
            "model/image='cnn'",
            "finetune.lr=0.001",
        ],
        exclude=["sweep", "hparams_search"],
        is_group=lambda key: key in ("debug", "hparams_search", "model/image"),
    )
    assert text.startswith("# @package _global_\n")
    assert "dvc exp run -S '+debug=tiny' -S '+experiment=best_s1'" in text
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    assert body.split() == [
        "defaults:",
        "-",
        "override",
        "/model/image:",
        "cnn",
        "finetune:",
        "max_steps:",
        "image:",
        "9",
        "lr:",
        "0.001",
        "study:",  # the pipeline selects its rate from the grid: pinned to the trial's
        "lr_grid:",
        "-",
        "0.001",
    ]


def test_child_runs_left_running_by_a_killed_sweep_are_closed(tmp_path: Path) -> None:
    # A sweep killed between Optuna's tell() and MLflow's close leaves the child RUNNING; the
    # next sweep of the study closes it from the trial's final state.
    from mlflow.tracking import MlflowClient

    from hydra_plugins.transferlab_optuna_sweeper._tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    study = optuna.create_study(study_name="s", direction="maximize")
    tracker = Tracker(uri, "exp")
    parent = tracker.open_parent(study, {"optuna.study_name": "s"}, {})
    runs = []
    for value in (0.5, None):
        trial = study.ask()
        runs.append(tracker.open_child("s", trial.number, [f"x={trial.number}"]))
        trial.report(0.25, step=0)
        if value is None:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, value)
    MlflowClient(uri).set_terminated(runs[0], "FINISHED")  # as the job's Lightning logger does
    again = Tracker(uri, "exp")
    assert again.open_parent(study, {}, {}) == parent  # the study remembers its parent run
    assert again.close_leftovers(study, ["val/acc"]) == 2
    client = MlflowClient(uri)
    (done, pruned) = (client.get_run(r) for r in runs)
    assert done.info.status == "FINISHED" and done.data.tags["optuna.state"] == "COMPLETE"
    assert done.data.metrics["optuna/val/acc"] == 0.5
    assert pruned.data.tags["pruned"] == "true" and pruned.info.status == "FINISHED"
    assert again.close_leftovers(study, ["val/acc"]) == 0


def test_shipped_search_configs_compose_into_distributions() -> None:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        spaces = {}
        for name in ("lr_freeze_wd", "multitask_weights", "pretrain_mask_ratio"):
            cfg = compose("config", [f"hparams_search={name}"], return_hydra_config=True)
            sweeper = OmegaConf.to_container(cfg.hydra.sweeper, resolve=True)
            assert sweeper["_target_"].endswith("TransferlabOptunaSweeper")
            assert sweeper["study_name"] == name
            assert sweeper["storage"] == "sqlite:///optuna.db"
            assert sweeper["direction"] == cfg.sweep.direction == "maximize"
            spaces[name] = parse_search_space(sweeper["params"])
    lr = {p.name: p.distribution for p in spaces["lr_freeze_wd"].params}
    assert lr["finetune.lr"] == FloatDistribution(1e-5, 0.1, log=True)
    assert lr["finetune.freeze_depth"] == IntDistribution(0, 4)
    assert lr["finetune.weight_decay"].log
    (simplex,) = spaces["multitask_weights"].simplexes
    assert simplex.key == "finetune.multitask.weights"
    assert simplex.items == ["main", "rotation"]
    (mask,) = spaces["pretrain_mask_ratio"].params
    assert mask.name == "objectives.mae.mask_ratio"


# --------------------------------------------------------------------------- end to end


def _finished(db: Path, study: str) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=30) as con:
            row = con.execute(
                "SELECT COUNT(*) FROM trials t JOIN studies s ON t.study_id = s.study_id "
                "WHERE s.study_name = ? AND t.state IN ('COMPLETE', 'PRUNED')",
                (study,),
            ).fetchone()
        return int(row[0])
    except sqlite3.Error:
        return 0


def _load(root: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{root / 'optuna.db'}")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny throw-away project with data and the MAE backbone built by `dvc repro`."""
    root = make_project(tmp_path_factory.mktemp("sweep"), ["+debug=tiny"])
    run([str(BIN / "dvc"), "repro", "pretrain-image"], root)
    return root


@pytest.fixture(scope="module")
def swept(project: Path) -> SimpleNamespace:
    """The main sweep, killed with SIGKILL after two finished trials, then run again."""
    log = (project / "sweep-killed.log").open("w")
    proc = subprocess.Popen(
        SWEEP + MAIN,
        cwd=project,
        env=project_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 600
        while _finished(project / "optuna.db", "main") < 2:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    "the first sweep ended before it could be killed:\n"
                    + (project / "sweep-killed.log").read_text()[-3000:]
                )
            time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    at_kill = {t.number: t.state for t in _load(project, "main").get_trials()}
    second = run(SWEEP + MAIN, project, timeout=900)
    return SimpleNamespace(
        root=project,
        at_kill=at_kill,
        log=second.stdout + second.stderr,
        study=_load(project, "main"),
    )


def _lr(t) -> float:
    return float(t.params["finetune.lr"])


def test_a_multirun_without_a_search_config_gets_the_optuna_sweeper() -> None:
    from transferlab.sweep import with_default_sweeper

    assert with_default_sweeper(["-m", "finetune.lr=interval(0,1)"]) == [
        "-m",
        "finetune.lr=interval(0,1)",
        "hparams_search=default",
    ]
    for given in (
        ["-m", "hparams_search=lr_freeze_wd", "finetune.lr=interval(0,1)"],
        ["-m", "hydra/sweeper=basic"],
        ["finetune.lr=interval(0,1)"],  # no multirun
        ["-m", "finetune.lr=0.001,0.01", "finetune.freeze_depth=range(0,3)"],  # a grid: basic
    ):
        assert with_default_sweeper(given) == given


def test_an_int_cast_interval_sweep_runs_on_the_default_sweeper(project: Path) -> None:
    # Hydra's documented integer form, and no hparams_search=: the sweep must not dead-end.
    run(
        [
            *SWEEP,
            "+debug=tiny",
            "trainer.num_threads=1",
            "finetune.max_steps.image=3",
            "finetune.freeze_depth=int(interval(0, 4))",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.study_name=intcast",
        ],
        project,
        timeout=600,
    )
    trials = _load(project, "intcast").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert all(isinstance(t.params["finetune.freeze_depth"], int) for t in trials)


def test_the_pruner_sees_running_seed_means_at_one_step_per_seed_epoch() -> None:
    import torch

    from transferlab.sweep import pruning_callback

    class Trial:
        def __init__(self) -> None:
            self.reports: list[tuple[float, int]] = []

        def report(self, value: float, step: int) -> None:
            self.reports.append((value, step))

        def should_prune(self) -> bool:
            return False

    trial = Trial()
    first = {0: 0.2, 1: 0.4}  # seed 0's validation accuracy per epoch
    cb = pruning_callback(trial, "val/acc", max_epochs=2, seed_index=1, n_seeds=2, earlier=[first])
    for epoch, value in ((0, 0.6), (1, 0.8)):
        trainer = SimpleNamespace(
            sanity_checking=False,
            current_epoch=epoch,
            callback_metrics={"val/acc": torch.tensor(value)},
        )
        cb.on_validation_end(trainer, None)
    # seed 1's epochs come after seed 0's (steps 2, 3); each value is the mean over seeds so far
    assert [(round(v, 6), s) for v, s in trial.reports] == [(0.4, 2), (0.6, 3)]
    assert cb.values == {0: pytest.approx(0.6), 1: pytest.approx(0.8)}


def test_a_study_runs_two_seeds_per_trial_and_re_evaluates_its_best_on_held_out_seeds(
    project: Path,
) -> None:
    run(
        [
            *SWEEP,
            "hparams_search=lr_freeze_wd",
            "+debug=tiny",  # study.seeds = [0, 1]: two seeds per trial
            "trainer.num_threads=1",
            "finetune.max_steps.image=6",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.study_name=seeded",
            "sweep.heldout_seeds=[7]",
        ],
        project,
        timeout=900,
    )
    study = _load(project, "seeded")
    done = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert len(done) >= 1
    con = sqlite3.connect(project / "mlflow.db")
    for t in done:
        rows = dict(
            con.execute(
                "SELECT key, value FROM latest_metrics WHERE run_uuid = ?",
                (t.user_attrs["mlflow_run_id"],),
            )
        )
        seeds = [rows["val/acc/seed0"], rows["val/acc/seed1"]]
        assert rows["val/acc/seed_mean"] == pytest.approx(sum(seeds) / 2)
        assert t.value == pytest.approx(rows["val/acc/seed_mean"])
    held = study.user_attrs["heldout"]
    assert held["heldout_seeds"] == [7] and held["search_seeds"] == [0, 1]
    assert held["search_value"] == pytest.approx(study.best_value)
    assert 0.0 <= held["heldout_value"] <= 1.0


def test_a_held_out_seed_the_search_uses_is_refused_before_any_trial(project: Path) -> None:
    proc = run(
        [
            *SWEEP,
            "hparams_search=lr_freeze_wd",
            "+debug=tiny",
            "hydra.sweeper.study_name=overlap",
            "sweep.heldout_seeds=[1,7]",  # study.seeds of debug/tiny: [0, 1]
        ],
        project,
        check=False,
    )
    assert proc.returncode != 0
    assert "sweep.heldout_seeds shares [1] with the search's seeds [0, 1]" in proc.stderr
    names = [
        s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{project / 'optuna.db'}")
    ]
    assert "overlap" not in names


def test_killed_sweep_resumes_to_exactly_n_trials(swept: SimpleNamespace) -> None:
    trials = swept.study.get_trials()
    states = [t.state for t in trials]
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == N_TRIALS
    # The kill left at most one trial running: it ends as FAIL(interrupted), outside the failure
    # budget, and its parameters are run again by the resumed sweep.
    running_at_kill = [n for n, s in swept.at_kill.items() if s == TrialState.RUNNING]
    assert len(running_at_kill) <= 1
    interrupted = [t for t in trials if t.user_attrs.get("interrupted")]
    assert [t.number for t in interrupted] == running_at_kill
    for t in interrupted:
        assert t.state == TrialState.FAIL and "interrupted" in t.user_attrs["fail_reason"]
        retries = [r for r in trials if r.user_attrs.get("retry_of") == t.number]
        if t.params:  # (empty only when killed inside ask(), before sampling)
            (retry,) = retries
            assert retry.params == t.params and retry.state != TrialState.FAIL
    # Every grid point ran exactly once to an outcome: no duplicate, none lost.
    outcomes = [t for t in trials if not t.user_attrs.get("interrupted")]
    assert sorted(map(_lr, outcomes)) == sorted(GRID)
    assert "5/5 finished" in swept.log


def test_pruned_trials_run_fewer_epochs_than_the_budget(swept: SimpleNamespace) -> None:
    trials = swept.study.get_trials()
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    # lr=1e-6 never leaves chance while at least two learning trials finished before it
    assert 1e-6 in [_lr(t) for t in pruned]
    for t in pruned:
        assert 1 <= len(t.intermediate_values) < EPOCHS
        assert "pruned at epoch" in t.user_attrs["pruned_reason"]
    for t in complete:
        assert sorted(t.intermediate_values) == list(range(EPOCHS))
        # the value is the last epoch's validation accuracy (sweep.reduce=last)
        assert t.value == t.intermediate_values[EPOCHS - 1]
    assert len(complete) >= 1


def test_failed_trials_are_recorded_with_the_reason(swept: SimpleNamespace) -> None:
    failed = {
        _lr(t): t.user_attrs["fail_reason"]
        for t in swept.study.get_trials(states=(TrialState.FAIL,))
        if not t.user_attrs.get("interrupted")
    }
    assert set(failed) == {1e9, -1}
    assert failed[-1].startswith("ConfigError: finetune.lr=-1.0 must be > 0")
    assert re.match(r"TrainingError: train/loss became (nan|inf|-inf)", failed[1e9])
    # the sweep went on after them: later trials exist and the study is complete
    numbers = {
        _lr(t): t.number for t in swept.study.get_trials() if not t.user_attrs.get("interrupted")
    }
    assert max(numbers.values()) > min(numbers[1e9], numbers[-1])


def test_mlflow_parent_run_per_study_and_child_per_trial(swept: SimpleNamespace) -> None:
    con = sqlite3.connect(swept.root / "mlflow.db")
    tags: dict[str, dict[str, str]] = {}
    for run_id, key, value in con.execute("SELECT run_uuid, key, value FROM tags"):
        tags.setdefault(run_id, {})[key] = value
    status = dict(con.execute("SELECT run_uuid, status FROM runs"))
    parents = [
        r
        for r, t in tags.items()
        if t.get("transferlab.stage") == "sweep" and t.get("optuna.study_name") == "main"
    ]
    assert len(parents) == 1, "a resumed sweep reuses the study's parent run"
    (parent,) = parents
    assert status[parent] == "FINISHED"
    children = {r: t for r, t in tags.items() if t.get("mlflow.parentRunId") == parent}
    trials = [t for t in swept.study.get_trials() if "mlflow_run_id" in t.user_attrs]
    linked = {t.user_attrs["mlflow_run_id"] for t in trials}
    # one child per launched trial (the killed process may leave one untagged child behind)
    assert linked <= set(children) and len(set(children) - linked) <= 1
    assert len(trials) >= len(GRID)
    expected_status = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED"}
    for t in trials:
        run_id = t.user_attrs["mlflow_run_id"]
        child = children[run_id]
        assert child["optuna.trial_number"] == str(t.number)
        if t.user_attrs.get("interrupted"):
            assert status[run_id] == "KILLED"
            continue
        assert child["optuna.state"] == t.state.name
        assert child["pruned"] == ("true" if t.state == TrialState.PRUNED else "false")
        assert status[run_id] == expected_status[t.state.name]
        params = dict(con.execute("SELECT key, value FROM params WHERE run_uuid = ?", (run_id,)))
        assert float(params["finetune.lr"]) == _lr(t)
        steps = [
            s
            for (s,) in con.execute(
                "SELECT step FROM metrics WHERE run_uuid = ? AND key = 'optuna/intermediate'",
                (run_id,),
            )
        ]
        assert sorted(steps) == sorted(t.intermediate_values)
        # the fit's own per-epoch curve went into the same child run
        n_val = con.execute(
            "SELECT COUNT(*) FROM metrics WHERE run_uuid = ? AND key = 'val/acc'", (run_id,)
        ).fetchone()[0]
        assert n_val == len(t.intermediate_values)
    best = dict(con.execute("SELECT key, value FROM metrics WHERE run_uuid = ?", (parent,)))
    assert best["best/val/acc"] == swept.study.best_value
    assert best["trials/complete"] + best["trials/pruned"] == N_TRIALS


def test_best_trial_is_exported_as_an_experiment(swept: SimpleNamespace) -> None:
    from transferlab.config import compose

    path = swept.root / "conf" / "experiment" / "best_main.yaml"
    text = path.read_text()
    assert text.startswith("# @package _global_\n")
    assert "dvc exp run -S '+debug=tiny' -S '+experiment=best_main'" in text
    best = swept.study.best_trial
    cfg = compose(["+debug=tiny", "+experiment=best_main"], config_dir=swept.root / "conf")
    assert cfg.finetune.lr == _lr(best) and list(cfg.study.lr_grid) == [_lr(best)]
    assert cfg.finetune.max_steps.image == 3 * EPOCHS and cfg.finetune.freeze_depth == 2
    assert cfg.trainer.num_threads == 1
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    assert "sweep" not in body and "hparams_search" not in body and "logger" not in body


# --------------------------------------------------------------------------- slow


@pytest.mark.slow
def test_best_config_reproduces_the_trial_through_dvc_exp_run(swept: SimpleNamespace) -> None:
    root = swept.root
    run(["git", "add", "conf/experiment/best_main.yaml"], root)
    run(["git", "commit", "-qm", "best config"], root)
    run(
        [str(BIN / "dvc"), "exp", "run", "-S", "+debug=tiny", "-S", "+experiment=best_main"],
        root,
        timeout=1200,
    )
    import json

    history = json.loads((root / "models/image/finetune/history.json").read_text())
    # the pipeline's seed-0 fit at the pinned rate is the trial's fit
    arm = history["targets"]["fmnist"]["mae"]
    assert arm["lr"] == _lr(swept.study.best_trial)
    curve = arm["seeds"]["0"]["history"]
    assert len(curve) == EPOCHS
    assert curve[-1]["val/acc"] == pytest.approx(swept.study.best_value, abs=1e-9)


@pytest.mark.slow
def test_two_workers_share_one_storage(project: Path) -> None:
    args = [
        "hparams_search=lr_freeze_wd",
        "+debug=tiny",
        "finetune.max_steps.image=9",
        "trainer.num_threads=1",
        "hydra/sweeper/sampler=random",
        "hydra/sweeper/pruner=nop",
        "hydra.sweeper.n_trials=8",
        "hydra.sweeper.study_name=workers",
        "hydra.sweeper.max_failure_rate=0.5",
    ]
    logs = [project / f"worker{i}.log" for i in range(2)]
    procs = []
    for log in logs:
        with log.open("w") as fh:
            procs.append(
                subprocess.Popen(
                    SWEEP + args,
                    cwd=project,
                    env=project_env(),
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                )
            )
    for proc, log in zip(procs, logs, strict=True):
        assert proc.wait(timeout=1200) == 0, log.read_text()[-3000:]
    study = _load(project, "workers")
    trials = study.get_trials()
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == 8 and len(trials) == 8
    # both workers ran trials, no trial ran twice
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) == 2
    ran = [
        {int(n) for n in re.findall(r"trial (\d+) (?:COMPLETE|PRUNED|FAIL)", log.read_text())}
        for log in logs
    ]
    assert ran[0] and ran[1] and not ran[0] & ran[1]
    assert ran[0] | ran[1] == {t.number for t in trials}
    params = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(params)) == len(params)


@pytest.mark.slow
def test_dvc_queue_grid_over_a_param(project: Path) -> None:
    import json

    run(
        [
            str(BIN / "dvc"),
            "exp",
            "run",
            "--queue",
            "-S",
            "+debug=tiny",
            "-S",
            "finetune.max_steps.image=3",
            "-S",
            "finetune.lr=0.001,0.003",
        ],
        project,
    )
    run([str(BIN / "dvc"), "exp", "run", "--run-all", "--jobs", "1"], project, timeout=1800)
    shown = json.loads(run([str(BIN / "dvc"), "exp", "show", "--json"], project).stdout)
    lrs = set()
    for rev in shown:
        for exp in rev.get("experiments") or []:
            for r in exp.get("revs") or []:
                params = r["data"]["params"]["params.yaml"]["data"]
                lrs.add(params["finetune"]["lr"])
    assert {0.001, 0.003} <= lrs
