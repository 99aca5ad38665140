"""Model and training options are generated from the config fields: one description, from the CLI to the layer."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import pytest
import typer
import typer.main
from pydantic import Field
from typer.testing import CliRunner

from fnostab.cli.app import app
from fnostab.cli.common import command
from fnostab.cli.options import ConfigOptions, cli_type, config_options
from fnostab.cli.sweeps import SHOOTOUT_OPTIONS, STRESS_OPTIONS
from fnostab.config import PRESETS, ModelConfig, TrainConfig, build, flag_name

runner = CliRunner()
ALL_MODEL = tuple(ModelConfig.model_fields)
ALL_TRAIN = tuple(TrainConfig.model_fields)
# The config fields each command exposes: every model option wherever a generator is built from options,
# every training option in `train`; the sweeps expose the sweep-wide few (an arm sets any field).
EXPOSED = {
    "train": {ModelConfig: ALL_MODEL, TrainConfig: ALL_TRAIN},
    "probe-activations": {ModelConfig: ALL_MODEL},
    "grad-gain": {ModelConfig: ALL_MODEL},
    "shootout": {
        ModelConfig: ("fno_blocks",),
        TrainConfig: ("epochs", "batch_size", "val_patches", "monitor_every", "accelerator"),
    },
    "stress": {
        ModelConfig: ("max_hidden_channels", "checkpointing"),
        TrainConfig: ("epochs", "batch_size", "val_patches", "accelerator"),
    },
}
# Help texts a command words for its own narrower meaning of a field.
OWN_HELP = {
    ("shootout", "fno_blocks"): "Depth for every arm (arms may override).",
    ("shootout", "epochs"): "Epochs per run (at most 20; longer runs belong to `stress`).",
    ("stress", "epochs"): "Epochs per run (not capped).",
}


def options_of(name: str) -> dict[str, Any]:
    """The command's options (click parameters) by their first flag."""
    cmd = typer.main.get_command(app).commands[name]
    return {param.opts[0]: param for param in cmd.params if param.param_type_name == "option"}


@pytest.mark.parametrize("name", sorted(EXPOSED))
def test_every_exposed_config_field_is_an_option_with_its_type_help_and_a_none_default(name: str) -> None:
    options = options_of(name)
    for config, fields in EXPOSED[name].items():
        for field in fields:
            flag = flag_name(field)
            assert flag in options, (name, flag)
            option = options[flag]
            info = config.model_fields[field]
            kind = cli_type(info.annotation)
            assert option.default is None  # "the preset's value": an explicit flag is told apart
            assert option.type_descriptor.annotation is kind, (flag, option.type_descriptor)
            if kind is bool:
                assert option.secondary_opts == [f"--no-{flag[2:]}"]
            expected = OWN_HELP.get((name, field), info.description)
            assert expected and option.help.startswith(expected.removesuffix(".")), (name, flag, option.help)


@pytest.mark.parametrize("config", [ModelConfig, TrainConfig])
def test_every_config_field_has_a_description_naming_each_of_its_choices(config: type) -> None:
    for field, info in config.model_fields.items():
        assert info.description, f"{config.__name__}.{field} has no description (its --help text)"
        annotation = info.annotation
        if typing.get_origin(annotation) is typing.Literal:
            for choice in typing.get_args(annotation):
                assert choice in info.description, (field, choice)


def test_help_shows_a_default_only_for_fields_no_preset_sets() -> None:
    options = options_of("train")
    preset_set = {name for preset in PRESETS.values() for section in preset.values() for name in section}
    assert {"width", "lr", "epochs"} <= preset_set
    assert "(default" not in options["--width"].help and "(default" not in options["--lr"].help
    assert options["--blowup-factor"].help == "Loss above this × best smoothed loss → diverged (default 1000)."
    assert options["--collapse-threshold"].help.endswith("→ collapsed (default 0.01).")
    assert options["--precursor-window"].help == "Steps kept before a spike or failure (default 100)."
    assert options["--block-init"].help.endswith("zero_gamma or layerscale (default zero_gamma).")
    assert "(default" not in options["--max-hidden-channels"].help  # None: no cap


def test_the_sweeps_hand_over_exactly_the_sweep_wide_fields() -> None:
    for groups, name in ((SHOOTOUT_OPTIONS, "shootout"), (STRESS_OPTIONS, "stress")):
        for group in groups:
            assert tuple(group.names) == EXPOSED[name][group.config]


# A field added to a config is a flag of every command exposing that config, without other edits: here
# a config grown by one field, exposed by a command written the way the real ones are.
class GrownModelConfig(ModelConfig):
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout after each block.")


GROWN = ConfigOptions(GrownModelConfig, panel="Model")
grown_app = typer.Typer()


@grown_app.command()
@command
@config_options(GROWN)
def grown(out: Path = typer.Option(Path("x"), "--out"), json_output: bool = False, **options: Any) -> None:
    config = build(GrownModelConfig, GROWN.values(options))
    print(config.model_dump_json())


def test_a_new_config_field_becomes_a_flag_with_no_other_edit() -> None:
    result = runner.invoke(grown_app, ["--dropout", "0.25", "--width", "8", "--checkpointing"])
    assert result.exit_code == 0, result.output
    config = GrownModelConfig.model_validate_json(result.stdout)
    assert (config.dropout, config.width, config.checkpointing, config.arch) == (0.25, 8, True, "hybrid")
    help_text = runner.invoke(grown_app, ["--help"], env={"COLUMNS": "300"}, terminal_width=300).stdout
    assert "--dropout" in help_text and "Dropout after each block (default 0)." in " ".join(help_text.split())


def test_a_bad_value_of_a_new_field_exits_2_naming_its_flag() -> None:
    result = runner.invoke(grown_app, ["--dropout", "1.5"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == ["error: invalid --dropout: Input should be less than 1 (got 1.5)"]
    assert runner.invoke(grown_app, ["--dropout", "abc"]).exit_code == 2  # the parser's own check


def test_a_declaration_naming_no_field_of_its_config_is_refused() -> None:
    with pytest.raises(ValueError, match="ModelConfig has no field"):
        ConfigOptions(ModelConfig, fields=("widht",))


def test_an_option_declared_by_hand_and_from_a_config_is_refused() -> None:
    def clash(width: int = typer.Option(1, "--width"), **options: Any) -> None: ...

    with pytest.raises(TypeError, match="declares width by hand and from a config"):
        config_options(ConfigOptions(ModelConfig))(clash)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--layerscale-init", "0"], "invalid --layerscale-init: Input should be greater than 0 (got 0.0)"),
        (["--momentum", "1"], "invalid --momentum: Input should be less than 1 (got 1.0)"),
        (
            ["--width", "16", "--max-hidden-channels", "8"],
            "invalid --max-hidden-channels: must be ≥ width (16), or unset for no cap (got 8)",
        ),
        (["--arch", "unet"], "invalid --arch: Input should be 'fno', 'hybrid' or 'stable_hybrid' (got 'unet')"),
    ],
)
def test_train_validates_generated_options_through_the_config_and_writes_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--preset", "smoke", "--out", str(out), *args])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [f"error: {message}"]
    assert not out.exists()
