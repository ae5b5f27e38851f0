"""The task and experiment configs of the regression and Boolean tasks."""

from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

import seqicl.tasks as tasks
from seqicl.models import build_model, count_parameters
from seqicl.training.config import validate
from seqicl.training.run import build_task

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CONTINUOUS = sorted(n for n in tasks.available() if tasks.task_class(n).kind == "continuous")


def test_the_continuous_tasks_are_the_expected_ones():
    assert set(CONTINUOUS) == {
        "linear_regression", "noisy_linear_regression", "sparse_linear_regression", "quadratic_regression",
        "relu2nn_regression", "decision_tree_regression", "conjunction", "disjunction", "dnf3", "cnf3",
        "parity", "sparse_parity", "majority"}


@pytest.mark.parametrize("name", CONTINUOUS)
def test_task_config_lists_every_parameter(name):
    cfg = yaml.safe_load((CONFIGS / "task" / f"{name}.yaml").read_text())
    assert cfg.pop("name") == name
    assert set(cfg) == set(tasks.parameters(name))
    task = tasks.build(name, **cfg)
    assert task.params() == cfg


def compose_run(*overrides):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, "paths.output_dir=unused"])
    return validate(cfg)


@pytest.mark.parametrize("experiment,task", [("regression/transformer", "linear_regression"),
                                             ("regression/transformer", "decision_tree_regression"),
                                             ("boolean/transformer", "conjunction"),
                                             ("boolean/transformer", "parity")])
def test_experiment_builds_garg_sized_model(experiment, task):
    c = compose_run(f"experiment={experiment}", f"task={task}")
    built = build_task(c["task"])
    assert built.name == task
    assert c["data"]["train_size"] is None and c["data"]["batch_size"] == 64
    assert c["optim"]["lr"] == 1e-4
    model = build_model(c["model"], built)
    assert len(model.blocks) == 12 and model.d_model == 256
    assert model.blocks[0].mixer.n_heads == 8 and model.pos_embed is not None
    assert 9e6 < count_parameters(model) < 1.1e7
    if built.curriculum is not None:
        assert built.curriculum.full_size_step() <= c["trainer"]["max_steps"]
