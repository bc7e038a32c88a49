"""Training samples: pair sampling, mask expansion, augmentation and the models they call."""
