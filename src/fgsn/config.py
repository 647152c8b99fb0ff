"""One typed config per command: pydantic models (unknown keys and wrong types are errors that
name the key), filled from defaults < YAML file (`--config`) < command-line flags.

Commands declare their flags with `default=argparse.SUPPRESS`, so a flag the user did not give
is absent from the namespace and cannot shadow a value from the YAML file.
"""

from __future__ import annotations

import argparse
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.fields import FieldInfo

from fgsn.errors import ConfigError, InputError

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


def with_overrides(cls: type[T], options: BaseModel | None, overrides: dict[str, Any], where: str = "options") -> T:
    """`options` (or the defaults) with `overrides`, validated as one set of values, so that an
    options object plus keyword overrides is checked exactly like flags or YAML keys
    (`model_copy(update=...)` would skip validation). The given object is never modified."""
    if options is None:
        return build_options(cls, overrides, where)
    if not overrides and type(options) is cls:
        return options  # type: ignore[return-value]
    return build_options(cls, {**options.model_dump(exclude_unset=True), **overrides}, where)


def options_from_args(cls: type[T], args: argparse.Namespace, skip: tuple[str, ...] = ("func", "config", "command", "verbose")
                      ) -> T:
    """Defaults < YAML (`args.config`) < flags present in `args`. Mapping options given as
    repeated NAME=VALUE flags become dicts here; a flag of a section field (dest `SECTION.NAME`,
    see add_option_flags) fills that field of the section, over the YAML file's section."""
    values: dict[str, Any] = {}
    config = getattr(args, "config", None)
    if config:
        values.update(read_yaml(config))
        where = f"config {config}"
    else:
        where = "options"
    for k, v in vars(args).items():
        if k in skip:
            continue
        section, dot, name = k.partition(".")
        sub = _section_class(cls, section) if dot else None
        field = cls.model_fields.get(k) if not dot else sub.model_fields.get(name) if sub else None
        if field is not None and _is_dict(field.annotation) and isinstance(v, list):
            v = parse_pairs(v, "/".join(flag_names(k, field)), _extra(field).get("metavar", "NAME=VALUE"))
        if dot:
            given = values.get(section)
            values[section] = {**(given if isinstance(given, dict) else {}), name: v}
        else:
            values[k] = v
    return build_options(cls, values, where)


def _section_class(cls: type[BaseModel], section: str) -> type[BaseModel] | None:
    """The options class of field `section` of `cls`, when that field is one (a nested section)."""
    field = cls.model_fields.get(section)
    ann = field.annotation if field is not None else None
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def own_descriptions_first(cls: type[BaseModel], helps: dict[str, str]) -> dict[str, str]:
    """A shared help table without the keys `cls` describes itself (a field's own description says
    what it means for that command)."""
    return {k: v for k, v in helps.items() if not (k in cls.model_fields and cls.model_fields[k].description)}


def parse_pairs(values: list[str], flag: str, metavar: str = "NAME=VALUE") -> dict[str, str]:
    """Repeated `NAME=VALUE` flag values as a dict; a malformed or repeated NAME is an error."""
    out: dict[str, str] = {}
    for v in values:
        name, sep, value = v.partition("=")
        if not sep or not name or not value:
            raise InputError(f"{flag} {v!r}: expected {metavar}, e.g. {flag.split('/')[-1]} aligned=...")
        if name in out:
            raise InputError(f"{flag}: name {name!r} given twice; each model needs its own name")
        out[name] = value
    return out


def _extra(field: FieldInfo) -> dict[str, Any]:
    """Command-line settings of a field: `aliases` (more flag spellings) and `metavar`, given as
    Field(json_schema_extra={...})."""
    return field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}


def flag_names(name: str, field: FieldInfo) -> list[str]:
    """`--batch-size` for `batch_size`, then the field's aliases (older spellings kept working)."""
    return ["--" + name.replace("_", "-"), *_extra(field).get("aliases", [])]


def _is_dict(ann: Any) -> bool:
    return typing.get_origin(ann) is dict or any(typing.get_origin(a) is dict for a in typing.get_args(ann))


def add_option_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type[BaseModel],
                     helps: dict[str, str] | None = None, skip: tuple[str, ...] = (),
                     only: tuple[str, ...] | None = None, section: str | None = None,
                     prefix: str | Callable[[str], str] = "") -> None:
    """One flag per option field (`--batch-size` for `batch_size`, plus the field's aliases), all
    defaulting to SUPPRESS so that YAML values survive; lists are repeatable flags, mappings
    repeatable NAME=VALUE flags (or one JSON text, for a field marked json_schema_extra={"json": True}),
    booleans get --x/--no-x. `only`: just these fields, in this order
    (e.g. one argument group's). `section`: `cls` is the class of that field of the command's
    options (a nested section): the flags fill SECTION.NAME (options_from_args nests them);
    `prefix` (a string, or a function of the field name) goes before each flag's name, e.g.
    "safelora-" for `--safelora-threshold`; a prefixed flag has no aliases."""
    from pydantic_core import PydanticUndefined

    helps = helps or {}
    for name in only if only is not None else cls.model_fields:
        field = cls.model_fields[name]
        if name in skip:
            continue
        pre = prefix(name) if callable(prefix) else prefix
        flags = flag_names(name, field) if not pre else ["--" + pre + name.replace("_", "-")]
        dest = {"dest": f"{section}.{name}"} if section else {}
        ann = field.annotation
        args = typing.get_args(ann)
        is_list = typing.get_origin(ann) is list or any(typing.get_origin(a) is list for a in args)
        default = None if field.default in (None, PydanticUndefined) else field.default
        # helps are argparse text already; a field's description is plain text (escape its %)
        text = helps.get(name) or (field.description or "").replace("%", "%%")
        if default not in (None, ...) and not field.is_required():
            shown = repr(default) if isinstance(default, str) and "\n" in default else str(default)
            text = f"{text} (default: {shown.replace('%', '%%')})".strip()
        if field.is_required():
            text = f"{text} (required)".strip()
        if ann is bool:
            parser.add_argument(*flags, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=text,
                                **dest)
        elif _is_dict(ann) and not _extra(field).get("json"):
            parser.add_argument(*flags, action="append", default=argparse.SUPPRESS,
                                metavar=_extra(field).get("metavar", "NAME=VALUE"), help=text + " [repeatable]", **dest)
        elif is_list:
            parser.add_argument(*flags, action="append", default=argparse.SUPPRESS, metavar="X", help=text + " [repeatable]",
                                **dest)
        else:
            parser.add_argument(*flags, default=argparse.SUPPRESS, metavar=_extra(field).get("metavar", name.upper()),
                                help=text, **dest)
