"""`RPGSpec` is the one list of ring options: the CLI flags, `RPGConfig` and the timm kwargs derive from it."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
import timm

import rpg_hf
from rpg_hf.cli import build_parser
from rpg_hf.hf.remote_code import configuration_rpg as remote
from rpg_hf.spec import REFERENCE_FAN, SCOPES, SPEC_FIELDS, RPGSpec, add_spec_arguments, spec_kwargs

# a non-default value of every field (each differs from RPGSpec's default)
NON_DEFAULT = dict(dof=1234, seed=7, target_types=("Conv2d",), include=(r"layer\d",), exclude=("downsample",),
                   exclude_stem=False, exclude_head=False, scope="block", permute=False, sign_flip=False,
                   reference_fan=576, linear_std=0.05, generator_version=1)
TRI_STATE = {"exclude_stem"}


def _defaults() -> dict:
    return {f.name: f.default for f in dataclasses.fields(RPGSpec) if f.default is not dataclasses.MISSING}


def test_non_default_values_cover_every_field():
    assert set(NON_DEFAULT) == set(SPEC_FIELDS)
    defaults = _defaults()
    assert all(NON_DEFAULT[k] != defaults[k] for k in NON_DEFAULT if k in defaults)


def _parser(**kwargs) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_spec_arguments(parser, **kwargs)
    return parser


def test_generated_flags_cover_every_field():
    parser = _parser()
    dests = {a.dest for a in parser._actions if a.dest != "help"}
    assert dests == set(SPEC_FIELDS)
    flags = {s for a in parser._actions for s in a.option_strings}
    assert {"--dof", "--seed", "--scope", "--no-permute", "--no-sign-flip", "--no-exclude-head", "--exclude-stem",
            "--no-exclude-stem", "--target-types", "--include", "--exclude", "--reference-fan", "--linear-std",
            "--generator-version"} <= flags
    helps = {a.dest: a.help for a in parser._actions}
    for f in dataclasses.fields(RPGSpec):
        assert helps[f.name].startswith(f.metadata["help"])
    scope = next(a for a in parser._actions if a.dest == "scope")
    assert tuple(scope.choices) == SCOPES


def test_parsing_gives_the_spec():
    args = _parser().parse_args(["--dof", "10", "--no-permute", "--scope", "stage"])
    assert RPGSpec(**spec_kwargs(args)) == RPGSpec(dof=10, permute=False, scope="stage")
    assert args.permute is False and args.sign_flip is True and args.exclude_stem is None
    assert RPGSpec(**spec_kwargs(_parser().parse_args(["--dof", "10"]))) == RPGSpec(dof=10)


def test_every_field_from_the_command_line():
    argv = ["--dof", "1234", "--seed", "7", "--target-types", "Conv2d", "--include", r"layer\d", "--exclude",
            "downsample", "--no-exclude-stem", "--no-exclude-head", "--scope", "block", "--no-permute",
            "--no-sign-flip", "--reference-fan", "576", "--linear-std", "0.05", "--generator-version", "1"]
    assert RPGSpec(**spec_kwargs(_parser().parse_args(argv))) == RPGSpec(**NON_DEFAULT)
    assert _parser().parse_args(["--dof", "1", "--exclude-stem"]).exclude_stem is True


def test_add_spec_arguments_options():
    parser = _parser(required=(), exclude=("seed", "generator_version"), overrides={"dof": {"default": 45_000}})
    args = parser.parse_args([])
    assert args.dof == 45_000 and not hasattr(args, "seed") and not hasattr(args, "generator_version")
    with pytest.raises(SystemExit):
        _parser().parse_args([])  # --dof is required by default
    assert _parser(required=()).parse_args([]).dof is None
    with pytest.raises(ValueError, match="unknown RPGSpec field"):
        _parser(exclude=("dofs",))


def test_spec_kwargs_reads_mappings_and_objects():
    assert spec_kwargs({"dof": 3, "num_classes": 10, "include": None}) == {"dof": 3}
    assert spec_kwargs(argparse.Namespace(dof=3, seed=2, out="x")) == {"dof": 3, "seed": 2}


def test_cli_convert_and_fold_reach_every_field():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for command in ("convert", "fold"):
        assert {a.dest for a in sub.choices[command]._actions} >= set(SPEC_FIELDS), command
    # the historical flags keep their spelling and meaning
    args = build_parser().parse_args(["fold", "src", "-o", "out", "--dof", "600", "--seed", "4", "--scope", "stage",
                                      "--no-permute", "--no-sign-flip"])
    assert RPGSpec(**spec_kwargs(args)) == RPGSpec(dof=600, seed=4, scope="stage", permute=False, sign_flip=False)
    assert (args.source, args.out, args.permute, args.sign_flip) == ("src", "out", False, False)


# --------------------------------------------------------------------------- RPGConfig


def test_remote_code_config_agrees_with_rpg_spec():
    """The self-contained remote-code `RPGConfig` repeats the spec's names and defaults: they must agree."""
    config_fields = {f.name: f for f in dataclasses.fields(remote.RPGConfig)}
    assert set(SPEC_FIELDS) <= set(config_fields)
    fresh = remote.RPGConfig()
    for f in dataclasses.fields(RPGSpec):
        value = getattr(fresh, f.name)
        if f.default is dataclasses.MISSING:  # dof: the spec has none, the config a usable one
            assert isinstance(value, int) and value > 0
        elif isinstance(f.default, tuple):  # JSON lists; None means the spec's default
            assert value is None or tuple(value) == f.default, f.name
        else:
            assert value == f.default and type(value) is type(f.default), f.name
    assert remote.SCOPES == SCOPES and remote.REFERENCE_FAN == REFERENCE_FAN
    assert remote.GENERATOR_VERSION == rpg_hf.GENERATOR_VERSION
    assert remote.RPGConfig.__doc__ and all(name in remote.RPGConfig.__doc__ for name in SPEC_FIELDS)
    assert rpg_hf.RPGConfig().spec == RPGSpec(dof=rpg_hf.RPGConfig().dof)


def test_config_spec_round_trips_every_field():
    spec = RPGSpec(**NON_DEFAULT)
    config = rpg_hf.RPGConfig(architecture="test_resnet", **spec.to_dict())
    assert config.spec == spec
    reloaded = rpg_hf.RPGConfig.from_dict(config.to_dict())
    assert reloaded.spec == spec
    assert rpg_hf.RPGConfig(dof=10, target_types=None, include=None).spec == RPGSpec(dof=10)


# --------------------------------------------------------------------------- timm kwargs


def test_timm_kwargs_route_every_spec_field():
    model = timm.create_model("rpg_resnet18", num_classes=3, dof=500, exclude_head=False)
    assert model.rpg.spec == RPGSpec(dof=500, exclude_head=False) and model.fc.out_features == 3
    assert "fc" in {layer.name for layer in model.rpg.layers}
    model = timm.create_model("rpg.test_resnet", num_classes=2, **NON_DEFAULT)
    assert model.rpg.spec == RPGSpec(**NON_DEFAULT)
    assert {layer.name.split(".")[0] for layer in model.rpg.layers} <= {"layer1", "layer2", "layer3", "layer4"}
    assert timm.create_model("rpg.test_resnet").rpg.spec == RPGSpec(dof=45_000)  # the entrypoints' default DoF
