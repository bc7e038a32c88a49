"""Durian model: Dual ReferenceNet video diffusion on stock diffusers components."""
