"""The training engine shared by speaker and face networks: YAML config, data, DDP, AMP, checkpoints."""
