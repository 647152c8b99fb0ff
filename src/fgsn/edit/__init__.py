"""Edit: safety-direction projectors, sparse projection (full and LoRA), continual ledger."""
