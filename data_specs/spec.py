"""The base of every config section, the resources a stage or model asks for, and where a model runs."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Spec(BaseModel):
    """Base for every config section: immutable, and unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Resources(Spec):
    """What one instance of a stage or model asks of the Ray worker or actor that runs it."""

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
