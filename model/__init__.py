"""Durian model: Dual ReferenceNet video diffusion on stock diffusers components.

The classes a saved DurianPipeline names in its `model_index.json` are exported here,
so `DiffusionPipeline.from_pretrained` can import them from this package.
"""

from model.durian import DurianModel, ReferenceInputs
from model.encoders import IResNet
from model.pipeline import DurianPipeline, DurianPipelineOutput
from model.pose_guider import PoseGuider
from model.reference_attention import UNCONDITIONAL, ReadMode, ReferenceBank

__all__ = ["UNCONDITIONAL", "DurianModel", "DurianPipeline", "DurianPipelineOutput", "IResNet", "PoseGuider",
           "ReadMode", "ReferenceBank", "ReferenceInputs"]
