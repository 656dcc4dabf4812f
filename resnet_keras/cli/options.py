"""What the commands share: click options made from the option table (resnet_keras.config.options),
`--config FILE` through click's default_map, path and list types, and small output helpers.

No TensorFlow here: `--help` of every command imports this module.
"""

from __future__ import annotations

import click

from resnet_keras.config.options import GROUPS, OPTIONS
from resnet_keras.runs.rundir import WEIGHTS


class NonEmptyPath(click.Path):
    """click.Path that refuses an empty value, which would silently mean a default folder."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            self.fail("an empty path; expected a file or folder name", param, ctx)
        return super().convert(value, param, ctx)


class _Text(click.types.StringParamType):
    """A string option that keeps a list from --config as a list (tune's --depths, ... take either)."""

    def convert(self, value, param, ctx):
        if isinstance(value, (list, tuple)):
            return value
        return super().convert(value, param, ctx)


TEXT = _Text()


# ----------------------------------------------------------------------------- options from the table


def option(name: str, *decls: str, **overrides):
    """The click option of table option `name`: its flag, type, default and help.

    `decls` rename the flag (benchmark's --precision is mixed_precision); `overrides` replace any
    click keyword, for a command on which the option means something narrower (its own help).
    """
    spec = OPTIONS[name]
    kwargs = dict(help=spec.help)
    if spec.kind == "flag":
        kwargs["is_flag"] = True
    else:
        if spec.kind == "switch":
            decls = decls or (f"{spec.flag}/--no-{spec.flag[2:]}",)
        elif spec.choices:
            kwargs["type"] = click.Choice(spec.choices)
        elif spec.type is not str:
            kwargs["type"] = spec.type
        if spec.default is not None:
            kwargs.update(default=spec.default, show_default=True)
        elif spec.kind == "switch":
            kwargs["default"] = None  # neither given: the recipe's or the preset's choice
    kwargs.update(overrides)
    if "default" in overrides and overrides["default"] is None and spec.kind != "switch":
        del kwargs["default"]  # no default here: the command decides (e.g. from the image size)
        kwargs.pop("show_default", None)
    return click.option(*(decls or (spec.flag,)), **kwargs)


def options(*items):
    """One decorator applying options in the order given: table names or click decorators."""

    def apply(func):
        for item in reversed(items):
            func = (option(item) if isinstance(item, str) else item)(func)
        return func

    return apply


def group(name: str, **overrides):
    """The options of the table's group `name` (GROUPS), in order; `overrides`: {option name: click
    keywords} for a command on which one of them means something narrower."""
    return options(*(option(item, **overrides.get(item, {})) for item in GROUPS[name]))


run_weights_option = click.option(
    "--weights",
    type=click.Choice(WEIGHTS),
    default="final",
    show_default=True,
    help="final: model.keras; best: the best val-accuracy weights.",
)


def check_depth_or_preset(p: dict) -> None:
    if p["preset"] and p["depth"] is not None:
        raise click.UsageError("give --depth or --preset, not both.")


# ----------------------------------------------------------------------------- --config FILE

CONFIG_FILE_LIMIT = 1024 * 1024  # bytes; an option file is a few hundred


class ConfigCommand(click.Command):
    """A command with ``--config FILE``: a YAML or JSON mapping of its option names to values.

    The file's values become the context's `default_map`, so click fills every option not given on
    the command line from it and converts it with the option's own type. The keys allowed are the
    command's options; each value is checked as the command line would check it (`_checked`), when
    click asks for it, so a value the command line overrides is never looked at.
    """

    def __init__(self, *args, config_help: str, **kwargs):
        super().__init__(*args, **kwargs)
        config = click.Option(
            ["--config", "config"],
            type=NonEmptyPath(exists=True, dir_okay=False),
            help=config_help,
            callback=_use_config,
        )
        self.params.insert(0, config)
        for param in self.params:  # a list from the file stays a list (the option's parser splits strings)
            if type(param.type) is click.types.StringParamType:
                param.type = TEXT


def _use_config(ctx: click.Context, param: click.Parameter, path: str | None) -> str | None:
    if path is None:
        return None
    values = _read_config_file(path)
    allowed = sorted(p.name for p in ctx.command.params if p is not param)
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise click.BadParameter(f"unknown keys {unknown}; expected keys among {allowed}", param_hint="--config")
    ctx.default_map = {key: _checked(ctx, key, value) for key, value in values.items()}
    return path


def _read_config_file(path: str) -> dict:
    """A YAML or JSON mapping of option names (dashes or underscores) to values.

    Anchors and aliases are refused: a few nested aliases expand to gigabytes ("billion laughs").
    """
    import yaml  # YAML is a superset of JSON

    def bad(reason: str):
        return click.BadParameter(f"cannot read {path}: {reason}", param_hint="--config")

    from resnet_keras.data.preprocessing import open_regular_file

    try:
        with open_regular_file(path) as handle:  # a FIFO would block for ever
            raw = handle.read(CONFIG_FILE_LIMIT + 1)
        if len(raw) > CONFIG_FILE_LIMIT:
            raise bad(f"larger than {CONFIG_FILE_LIMIT // 1024} KB; expected a short YAML or JSON file of options")
        text = raw.decode("utf-8")
        if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader)):
            raise bad("YAML aliases (*name) are not accepted in option files; write the values out")
        data = yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as error:  # ValueError: not UTF-8, or not a regular file
        raise bad(" ".join(str(error).split())[:300]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path} must hold a mapping of option names to values", param_hint="--config")
    return {str(key).replace("-", "_"): value for key, value in data.items()}


def _checked(ctx: click.Context, key: str, value):
    """The default_map entry of a --config value: checked, when click looks it up, as strictly as the
    command line: a flag takes only true/false (YAML's "false" in quotes is a string, and
    bool("false") is True); a list only where a string goes (lists of depths, ...); an integer
    option no fraction. Click then converts it with the option's type."""
    param = next(p for p in ctx.command.params if p.name == key)

    def lookup():
        if value is None:
            return None
        hint = f"{key} in --config"
        if getattr(param, "is_flag", False) or param.type is click.BOOL:
            if not isinstance(value, bool):
                raise click.BadParameter(f"{value!r} is not true or false", param_hint=hint)
            return value
        if isinstance(value, (list, tuple)) and isinstance(param.type, click.types.StringParamType):
            return value
        if isinstance(value, (bool, list, tuple, dict)) or (
            param.type is click.INT and isinstance(value, float) and not value.is_integer()
        ):
            raise click.BadParameter(f"{value!r} is not a valid {param.type.name}", param_hint=hint)
        return value

    return lookup


# ----------------------------------------------------------------------------- output


def resolve_precision(name: str) -> str:
    """--mixed-precision/--precision as a concrete choice; says on stderr what auto chose, and warns
    when bfloat16 is asked for on a CPU that only emulates it."""
    from resnet_keras.core.precision import AUTO, resolve

    choice = resolve(name)
    if name == AUTO:
        click.echo(choice.note, err=True)
    if choice.warning:
        click.echo(f"Warning: {choice.warning}", err=True)
    return choice.name


def format_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    cells = [[title for _, title in columns]] + [[str(row[key]) for key, _ in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = [
        "  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(line, widths)))
        for line in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
