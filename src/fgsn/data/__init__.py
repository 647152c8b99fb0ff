"""Prompt sets with categories: user files, the benchmarks that ship in PyPI packages, chat templating."""

from fgsn.data.prompts import Prompt, PromptSet, load_prompts

__all__ = ["Prompt", "PromptSet", "load_prompts"]
