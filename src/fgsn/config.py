"""One typed config per command: pydantic models (unknown keys and wrong types are errors that
name the key), filled from defaults < YAML file (`--config`) < command-line flags.

Commands declare their flags with `default=argparse.SUPPRESS`, so a flag the user did not give
is absent from the namespace and cannot shadow a value from the YAML file.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from fgsn.errors import ConfigError

T = TypeVar("T", bound=BaseModel)


class Options(BaseModel):
    """Base of every command's options: strict about keys, lenient about YAML scalars."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def format_validation_error(e: ValidationError, where: str) -> str:
    parts = []
    for err in e.errors():
        key = ".".join(str(x) for x in err["loc"]) or "(root)"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key {key!r}")
        else:
            parts.append(f"{key}: {err['msg']} (got {err.get('input')!r:.60})")
    return f"{where}: " + "; ".join(parts)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of option: value, not {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def build_options(cls: type[T], values: dict[str, Any], where: str = "options") -> T:
    try:
        return cls(**values)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, where)) from None


def options_from_args(cls: type[T], args: argparse.Namespace, skip: tuple[str, ...] = ("func", "config", "command", "verbose")
                      ) -> T:
    """Defaults < YAML (`args.config`) < flags present in `args`."""
    values: dict[str, Any] = {}
    config = getattr(args, "config", None)
    if config:
        values.update(read_yaml(config))
        where = f"config {config}"
    else:
        where = "options"
    values.update({k: v for k, v in vars(args).items() if k not in skip})
    return build_options(cls, values, where)


def own_descriptions_first(cls: type[BaseModel], helps: dict[str, str]) -> dict[str, str]:
    """A shared help table without the keys `cls` describes itself (a field's own description says
    what it means for that command)."""
    return {k: v for k, v in helps.items() if not (k in cls.model_fields and cls.model_fields[k].description)}


def add_option_flags(parser: argparse.ArgumentParser, cls: type[BaseModel], helps: dict[str, str] | None = None,
                     skip: tuple[str, ...] = ()) -> None:
    """One flag per option field (`--batch-size` for `batch_size`), all defaulting to SUPPRESS so
    that YAML values survive; lists are repeatable flags, booleans get --x/--no-x."""
    import typing

    helps = helps or {}
    for name, field in cls.model_fields.items():
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        ann = field.annotation
        args = typing.get_args(ann)
        is_list = typing.get_origin(ann) is list or any(typing.get_origin(a) is list for a in args)
        is_bool = ann is bool
        from pydantic_core import PydanticUndefined

        default = None if field.default in (None, PydanticUndefined) else field.default
        # helps are argparse text already; a field's description is plain text (escape its %)
        text = helps.get(name) or (field.description or "").replace("%", "%%")
        if default not in (None, ...) and not field.is_required():
            text = f"{text} (default: {default})".strip()
        if field.is_required():
            text = f"{text} (required)".strip()
        if is_bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=text)
        elif is_list:
            parser.add_argument(flag, action="append", default=argparse.SUPPRESS, metavar="X", help=text + " [repeatable]")
        else:
            parser.add_argument(flag, default=argparse.SUPPRESS, metavar=name.upper(), help=text)
