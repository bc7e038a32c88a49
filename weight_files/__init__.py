"""Reading weight files, for every network of the project: the one place that opens `.safetensors` and PyTorch
pickles, apart from the networks themselves (as diffusers keeps `model_loading_utils.py` apart from its models).

- `weight_files.pickles`: PyTorch pickle checkpoints (`.pth`, `.ckpt`, `.bin`) through an allow-listed
  unpickler that never runs the file's code (`load_torch_checkpoint`, `unwrap_state_dict`, `CheckpointError`).
- `weight_files.tensors`: filling a network built on the meta device one tensor at a time (`open_weights`,
  `load_weights`), and the fingerprint of a network's weights (`weights_fingerprint`).

`model/` (Durian's networks), `tasks/` (perception and data-side models) and `training/` all load through here;
this package imports nothing else of the project's.
"""
