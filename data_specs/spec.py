"""The base of every config section, and the resources a stage or model asks for."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Spec(BaseModel):
    """Base for every config section: immutable, and unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Resources(Spec):
    """What one instance of a stage or model asks of the Ray worker or actor that runs it."""

    cpus: float = Field(1.0, ge=0)
    gpus: float = Field(0.0, ge=0)
