"""dahash-index: dual-channel-attention deep hashing for remote-sensing image retrieval."""
