"""Export: checkpoints to OpenVINO IR, int8-hybrid, LoRA fusing, tiny offline checkpoints (needs torch); imports `core` and `runtime`."""
