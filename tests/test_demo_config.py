"""The demo's --config: a run config file laid over the demo's own, refused by name when it is not one."""

import pytest

from neuron_assets.demo import main, overlay_run_config, read_run_config


def test_a_config_file_overrides_what_it_names_and_keeps_the_rest():
    base = {"ops": {"activation_records": {"config": {"n_neurons": 20, "seed": 0}}}}
    over = {"ops": {"activation_records": {"config": {"seed": 3}}, "scoring_excerpts": {"config": {"n_top": 2}}}}
    assert overlay_run_config(base, over) == {
        "ops": {
            "activation_records": {"config": {"n_neurons": 20, "seed": 3}},
            "scoring_excerpts": {"config": {"n_top": 2}},
        }
    }
    assert base["ops"]["activation_records"]["config"]["seed"] == 0  # the base is not changed


def test_a_config_file_is_read_as_yaml(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("ops:\n  scoring_excerpts:\n    config:\n      n_top: 2\n")
    assert read_run_config(str(path)) == {"ops": {"scoring_excerpts": {"config": {"n_top": 2}}}}


@pytest.mark.parametrize(
    "text, problem",
    [
        ("ops: [1, 2]\n", "must be a mapping with one key, 'ops'"),
        ("resources: {}\n", "one key, 'ops'"),
        ("ops: {\n", "cannot be read"),
    ],
)
def test_a_file_that_is_not_a_run_config_is_refused_naming_it_before_any_run(tmp_path, capsys, text, problem):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit) as exit_:
        main(["--config", str(path)])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert str(path) in error and problem in error


def test_a_missing_config_file_is_refused_naming_it(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--config", str(tmp_path / "absent.yaml")])
    assert "absent.yaml" in capsys.readouterr().err
