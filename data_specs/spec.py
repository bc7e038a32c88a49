"""The base of every config section, the one way a config is loaded (`load_spec`: YAML, the command's options,
`--set KEY=VALUE`; every problem a `ConfigError`), the Ray section every command shares, the resources a clip processor
or model asks for, and where a model runs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class Spec(BaseModel):
    """Base for every config section: immutable, and unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


SpecT = TypeVar("SpecT", bound=Spec)


class ConfigError(ValueError):
    """A configuration that cannot be used; the message lists every problem by field."""


def read_yaml(path: str | Path) -> dict:
    """The mapping in a YAML file (empty file: {}); `ConfigError` when it cannot be read or parsed."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read config {path}: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a YAML mapping of fields, not a {type(data).__name__}")
    return data


def format_validation_error(err: ValidationError, origin: str) -> str:
    """One line per problem: `field.path: message`."""
    lines = [f"invalid {origin}:"]
    for problem in err.errors():
        field = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        message = "unknown field" if problem["type"] == "extra_forbidden" else problem["msg"].removeprefix("Value error, ")
        lines.append(f"  {field}: {message}")
    return "\n".join(lines)


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """`data[a][b][c] = value` for `dotted` 'a.b.c', creating the sections on the way."""
    *parents, leaf = dotted.split(".")
    for part in parents:
        section = data.setdefault(part, {})
        if not isinstance(section, dict):
            raise ConfigError(f"{dotted}: {part!r} is a value, not a section")
        data = section
    data[leaf] = value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> None:
    """Apply `--set KEY=VALUE` items (dotted keys, YAML values) to a config dict."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {key.strip()}: the value is not YAML ({err})") from err
        set_dotted(data, key.strip(), value)


def load_spec(spec: type[SpecT], data: Mapping[str, Any] | str | Path | None = None, *,
              options: Mapping[str, Any] | None = None, overrides: Iterable[str] = (),
              origin: str | None = None) -> SpecT:
    """The one way every command loads its config: a YAML file or a dict (optional), then the command's own
    options (`{"data.dataset": ...}`; None values are left out), then `--set KEY=VALUE` overrides, validated once.
    Every problem, from an unreadable file to a bad field, is a `ConfigError` naming the field."""
    if isinstance(data, (str, Path)):
        origin = origin or str(data)
        data = read_yaml(data)
    merged: dict[str, Any] = dict(data or {})
    for dotted, value in (options or {}).items():
        if value is not None:
            set_dotted(merged, dotted, str(value) if isinstance(value, Path) else value)
    apply_overrides(merged, overrides)
    try:
        return spec.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, origin or f"{spec.__name__} configuration")) from err


def absolute_path(value: str) -> str:
    """A local path made absolute (URLs pass): Ray workers run in their own working directories."""
    return value if "://" in value else str(Path(value).expanduser().absolute())


class RayConfig(Spec):
    """Which Ray a command runs on: the same fields under `execution:` in build, train and evaluate configs."""

    ray_address: str | None = Field(
        None,
        description=(
            "Ray cluster to run on: None always starts a private local Ray (never another cluster on the "
            "machine); 'auto' joins the cluster this machine belongs to (RAY_ADDRESS or the last `ray start`); "
            "or HOST:PORT of a head node."
        ),
    )
    ray_connect_timeout_s: float = Field(
        10.0, gt=0, le=600, description="Give up on an unreachable `ray_address` after this many seconds."
    )
    local_ray_cpus: int | None = Field(
        None, ge=1, description="CPUs a local Ray may use (None: all); ignored when joining a cluster."
    )


class Resources(Spec):
    """What one instance of a clip processor or model asks of the Ray worker or actor that runs it."""

    cpus: float = Field(1.0, ge=0)
    gpus: float = Field(0.0, ge=0)


class RuntimeConfig(Spec):
    """Where and in what batches a model runs."""

    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="'auto': CUDA when the worker sees a GPU, else the CPU."
    )
    batch_size: int = Field(8, ge=1, le=4096, description="Images per forward pass.")
    cpus: float = Field(0.25, ge=0, description="CPUs Ray reserves for the model's actor: enough for a GPU "
                        "model or the truth backend; give a model that runs on the CPU more.")
    gpus: float = Field(0.0, ge=0, description="GPUs Ray gives the model's actor (fractions share one GPU).")
    replicas: int = Field(1, ge=1, le=1024, description="Actors running this model (e.g. one per GPU).")

    @model_validator(mode="after")
    def _device_matches_gpus(self) -> RuntimeConfig:
        if self.device == "cuda" and self.gpus == 0:
            raise ValueError("device 'cuda' needs gpus > 0, or the scheduler gives the worker no GPU")
        if self.device == "cpu" and self.gpus > 0:
            raise ValueError("device 'cpu' reserves no GPU: set gpus to 0")
        return self

    @property
    def resources(self) -> Resources:
        return Resources(cpus=self.cpus, gpus=self.gpus)
