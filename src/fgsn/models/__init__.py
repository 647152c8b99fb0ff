"""Model I/O: architecture registry, lazy safetensors reader, LoRA adapters, streaming writer."""
