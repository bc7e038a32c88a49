"""Frozen encoders around the trainable nets: VAE, CLIP image embeddings, ArcFace identity.

Images everywhere in this module are float (B, 3, H, W) in [0, 1]; masks (B, 1, H, W)
in [0, 1] with 1 on the attribute.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import AutoencoderKL
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from torch.nn import functional as F
from transformers import CLIPVisionModelWithProjection
from transformers.utils.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from model.durian import ReferenceInputs
from model.geometry import fit_similarity

# The standard ArcFace 5-point template in a 112x112 crop (insightface `arcface_dst`):
# left eye, right eye, nose tip, left mouth corner, right mouth corner.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)
ARCFACE_SIZE = 112


# ---------------------------------------------------------------- VAE


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> scaled latents (B, c, H / s, W / s): the posterior's mode (its mean), for
    training targets, references and the precomputed latents of a build alike (deterministic; SD's VAE posterior
    is so narrow that a sample differs by far less than the diffusion noise)."""
    pixels = (images * 2 - 1).to(device=vae.device, dtype=vae.dtype)
    return vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor


def reference_input(vae: AutoencoderKL, images: torch.Tensor, masks: torch.Tensor,
                    keep_attribute: bool) -> torch.Tensor:
    """The 5-channel input of a reference net: VAE latent of the masked image + mask.

    keep_attribute True: attribute reference, I * M (only the attribute).
    keep_attribute False: portrait reference, I * (1 - M) (the attribute removed).
    The mask channel is M itself, area-downsampled to latent size, in both cases.
    images: (B, 3, H, W); masks: (B, 1, H, W). Returns (B, c + 1, H / s, W / s).
    """
    visible = masks if keep_attribute else 1 - masks
    latents = encode_latents(vae, images * visible)
    small_mask = F.interpolate(masks.to(latents.dtype), size=latents.shape[-2:], mode="area")
    return torch.cat([latents, small_mask], dim=1)


# ---------------------------------------------------------------- CLIP


@torch.no_grad()
def clip_image_embeds(image_encoder: CLIPVisionModelWithProjection, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> projected CLIP image embeddings (B, 1, projection_dim).

    Resizes to the encoder's input size and applies CLIP's normalisation (what
    CLIPImageProcessor does, kept on the tensor's device).
    """
    size = image_encoder.config.image_size
    pixels = F.interpolate(images.float(), size=(size, size), mode="bicubic", align_corners=False,
                           antialias=True).clamp(0, 1)
    mean = pixels.new_tensor(OPENAI_CLIP_MEAN)[:, None, None]
    std = pixels.new_tensor(OPENAI_CLIP_STD)[:, None, None]
    pixels = ((pixels - mean) / std).to(image_encoder.dtype)
    return image_encoder(pixel_values=pixels).image_embeds[:, None]


# ---------------------------------------------------------------- ArcFace


class _IBasicBlock(nn.Module):
    """The pre-activation basic block of insightface's IResNet (BN-conv-BN-PReLU-conv-BN)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes, eps=1e-5)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes, eps=1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


IRESNET_LAYERS = {"r18": (2, 2, 2, 2), "r34": (3, 4, 6, 3), "r50": (3, 4, 14, 3), "r100": (3, 13, 30, 3)}


class IResNet(ModelMixin, ConfigMixin):
    """ArcFace IResNet backbone with the insightface (arcface_torch) parameter names,
    so its released `backbone.pth` state dicts load as they are (`model.builders.load_identity_encoder`).

    Input: aligned 112x112 faces in [-1, 1]; output: (B, embedding_dim) features.
    """

    @register_to_config
    def __init__(self, arch: str = "r50", embedding_dim: int = 512, widths: tuple[int, ...] = (64, 128, 256, 512)
                 ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0], eps=1e-5)
        self.prelu = nn.PReLU(widths[0])
        in_planes = widths[0]
        for index, (blocks, planes) in enumerate(zip(IRESNET_LAYERS[arch], widths), start=1):
            layer = [_IBasicBlock(in_planes, planes, stride=2)]
            layer += [_IBasicBlock(planes, planes, stride=1) for _ in range(blocks - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*layer))  # insightface's names: layer1..layer4
            in_planes = planes
        self.bn2 = nn.BatchNorm2d(in_planes, eps=1e-5)
        spatial = ARCFACE_SIZE // 2 ** len(widths)
        self.fc = nn.Linear(in_planes * spatial * spatial, embedding_dim)
        self.features = nn.BatchNorm1d(embedding_dim, eps=1e-5)

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        """faces: (B, 3, 112, 112) in [-1, 1] -> (B, embedding_dim)."""
        x = self.prelu(self.bn1(self.conv1(faces)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.features(self.fc(self.bn2(x).flatten(1)))


def align_faces(images: torch.Tensor, keypoints: np.ndarray) -> torch.Tensor:
    """Crop ArcFace's 112x112 aligned faces from 5-point keypoints.

    images: (B, 3, H, W); keypoints: (B, 5, 2) in the ArcFace order. Returns (B, 3, 112, 112).
    The warp of `model.geometry.warp_affine`, batched on the images' device: only the B (2, 3) matrices are
    computed on the host, and reach a GPU in one copy from pinned memory that does not wait for the device.
    """
    keypoints = np.asarray(keypoints)
    if keypoints.shape[1:] != (5, 2):
        raise ValueError(f"ArcFace alignment needs (B, 5, 2) keypoints, got {keypoints.shape}")
    height, width = images.shape[-2:]
    # grid_sample's coordinates (align_corners=False: pixel centres) of the canvas -> of the source pixels.
    canvas_to_pixels = np.array([[ARCFACE_SIZE / 2, 0, (ARCFACE_SIZE - 1) / 2],
                                 [0, ARCFACE_SIZE / 2, (ARCFACE_SIZE - 1) / 2], [0, 0, 1]])
    pixels_to_source = np.array([[2 / width, 0, 1 / width - 1], [0, 2 / height, 1 / height - 1], [0, 0, 1]])
    thetas = np.stack([
        (pixels_to_source @ np.linalg.inv(np.vstack([fit_similarity(points, ARCFACE_TEMPLATE), [0, 0, 1]]))
         @ canvas_to_pixels)[:2]
        for points in keypoints])
    thetas = torch.from_numpy(thetas).to(torch.float32)
    if images.is_cuda:
        thetas = thetas.pin_memory()
    thetas = thetas.to(images.device, non_blocking=True)
    grid = F.affine_grid(thetas, [images.shape[0], images.shape[1], ARCFACE_SIZE, ARCFACE_SIZE],
                         align_corners=False)
    return F.grid_sample(images, grid.to(images.dtype), mode="bilinear", padding_mode="zeros",
                         align_corners=False)


@torch.no_grad()
def identity_embeds(identity_encoder: IResNet, images: torch.Tensor, keypoints: np.ndarray) -> torch.Tensor:
    """The portrait net's conditioning: the L2-normalised ArcFace embedding of each aligned face.

    images: (B, 3, H, W); keypoints: (B, 5, 2) in the ArcFace order. Returns (B, 1, embedding_dim).
    """
    faces = align_faces(images.float(), keypoints) * 2 - 1
    features = identity_encoder(faces.to(identity_encoder.dtype))
    return F.normalize(features.float(), dim=-1)[:, None].to(features.dtype)


# ---------------------------------------------------------------- all reference inputs


def prepare_references(vae: AutoencoderKL, image_encoder: CLIPVisionModelWithProjection, identity_encoder: IResNet,
                       portrait: torch.Tensor, portrait_mask: torch.Tensor, portrait_keypoints: np.ndarray,
                       attributes: torch.Tensor, attribute_masks: torch.Tensor) -> ReferenceInputs:
    """Encode the references of B samples with N attributes each (training and inference alike).

    portrait: (B, 3, H, W); portrait_mask: (B, 1, H, W), the region to regenerate;
    portrait_keypoints: (B, 5, 2) ArcFace points of the portrait;
    attributes: (B, N, 3, H, W); attribute_masks: (B, N, 1, H, W).
    The reference nets and the attributes' CLIP embeddings see the masked images (the portrait without its
    attribute, each attribute alone). The identity embedding sees the unmasked portrait: ArcFace reads a tight
    112x112 face crop, where hair and hats barely enter, and is trained to ignore accessories, while masking
    glasses or a beard would cut holes into the face it was never trained on and corrupt the identity; it
    is also the paper's phi_port (an embedding of the portrait).
    """
    batch, num_attributes = attributes.shape[:2]
    flat_attributes, flat_masks = attributes.flatten(0, 1), attribute_masks.flatten(0, 1)
    attribute_embeds = clip_image_embeds(image_encoder, flat_attributes * flat_masks)
    return ReferenceInputs(
        portrait=reference_input(vae, portrait, portrait_mask, keep_attribute=False),
        attributes=reference_input(vae, flat_attributes, flat_masks, keep_attribute=True).unflatten(
            0, (batch, num_attributes)),
        identity_embeds=identity_embeds(identity_encoder, portrait, portrait_keypoints),
        attribute_embeds=attribute_embeds[:, 0].unflatten(0, (batch, num_attributes)),
    )
