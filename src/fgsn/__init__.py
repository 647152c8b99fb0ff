"""fgsn: training-free repair of a fine-tuned LLM's safety (Fine-Grained Safety Neurons with
continual projection). The public API lives in `fgsn.api`; the stages in their subpackages."""

__version__ = "0.1.0"
