"""The reference encoders' geometry: ArcFace alignment batched on the images' device."""

from __future__ import annotations

import numpy as np
import torch

from model.encoders import ARCFACE_SIZE, ARCFACE_TEMPLATE, align_faces
from model.geometry import fit_similarity, warp_affine


def test_align_faces_warps_each_image_as_warp_affine_does():
    """One batched affine grid from the B similarity matrices (the only host-to-device copy) crops what the
    per-image pixel warp crops, also for non-square images and different faces per row."""
    images = torch.rand(3, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    keypoints = np.stack([ARCFACE_TEMPLATE * 1.1 + 3, ARCFACE_TEMPLATE * 0.7 + [20, 5],
                          ARCFACE_TEMPLATE[:, ::-1] * 0.8 + 10])
    expected = torch.cat([warp_affine(image[None], fit_similarity(points, ARCFACE_TEMPLATE),
                                      (ARCFACE_SIZE, ARCFACE_SIZE)) for image, points in zip(images, keypoints)])
    aligned = align_faces(images, keypoints)
    assert aligned.shape == (3, 3, ARCFACE_SIZE, ARCFACE_SIZE) and aligned.abs().sum() > 0
    torch.testing.assert_close(aligned, expected, atol=1e-4, rtol=0)
