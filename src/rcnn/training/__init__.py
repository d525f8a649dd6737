"""Fine-tuning: configuration, the training loop and checkpoints, distributed training."""
