"""Learning the attention-hash network: features, sampling, losses, training, evaluation."""
