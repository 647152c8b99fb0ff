"""Edit: sparse projection (full and LoRA; the projectors are in fgsn.direction), the streamed edit of a
checkpoint, continual ledger, reversion, activation matching, task compensation."""
