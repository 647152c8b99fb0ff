"""Prompt sets with categories: user files, the benchmarks that ship in PyPI packages, chat templating."""

from fgsn.data.prompts import load_prompts
from fgsn.data.promptset import Prompt, PromptSet

__all__ = ["Prompt", "PromptSet", "load_prompts"]
