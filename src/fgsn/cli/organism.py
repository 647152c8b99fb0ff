"""`fgsn organism build`: build (or reuse) the base / aligned / fine-tuned trio the demo runs on."""

from __future__ import annotations

import argparse
import json

from fgsn.config import build_options, read_yaml

DESCRIPTION = ("Build, or reuse from the cache ($FGSN_CACHE, default ~/.cache/fgsn), the organism: SmolLM2-135M-Instruct "
               "as the unaligned base, a safety-SFT aligned model, and a fine-tune of it (full checkpoint and LoRA "
               "adapter).")


def configure(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="organism_command", metavar="COMMAND")
    sub.required = True
    b = sub.add_parser("build", help="build or reuse the organism and print where it is",
                       description="Build the organism for a recipe (defaults < --config YAML < flags). A finished "
                                   "build of the same recipe is reused; an interrupted one resumes.")
    b.add_argument("--config", help="YAML file with OrganismRecipe fields (e.g. poison_ratio: 0.1)")
    b.add_argument("--force", action="store_true", default=argparse.SUPPRESS,
                   help="delete this recipe's build and start from scratch")
    b.add_argument("--poison-ratio", type=float, dest="poison_ratio", default=argparse.SUPPRESS,
                   help="share of fine-tuning examples that are harmful prompts with compliant answers")
    b.add_argument("--scenario", default=argparse.SUPPRESS, dest="scenario",
                   help="build only these named fine-tunes of the aligned model (comma list): benign-full, "
                        "benign-lora, poisoned-full (10%% harmful examples), instruct-full (instructions only)")
    b.add_argument("--ft-seed", type=int, default=argparse.SUPPRESS, dest="ft_seed",
                   help="seed of the fine-tune alone (data sample, order, LoRA init): a second fine-tune of the "
                        "same aligned model")
    b.add_argument("--reduced", action="store_true", default=argparse.SUPPRESS,
                   help="the small, fast recipe used by the slow test (a few minutes)")
    b.add_argument("--print-paths", action="store_true", default=argparse.SUPPRESS, dest="print_paths",
                   help="print the paths as JSON on stdout (for scripts)")
    b.add_argument("--cache-root", default=argparse.SUPPRESS, dest="cache_root",
                   help="cache folder (default $FGSN_CACHE or ~/.cache/fgsn)")
    b.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars")
    b.add_argument("--device", default="cpu", help="where the training runs: cpu (default), cuda, cuda:N or auto")
    b.set_defaults(func=build_command)


def recipe_from_args(args: argparse.Namespace):
    from fgsn.organism.recipe import OrganismRecipe, reduced_recipe

    values: dict = {}
    config = getattr(args, "config", None)
    if config:
        values.update(read_yaml(config))
    for key in ("poison_ratio", "ft_seed"):
        if getattr(args, key, None) is not None:
            values[key] = getattr(args, key)
    if getattr(args, "reduced", False):
        try:
            return reduced_recipe(**values)
        except Exception as e:  # pydantic ValidationError -> the config error format
            from pydantic import ValidationError

            if isinstance(e, ValidationError):
                from fgsn.config import format_validation_error
                from fgsn.errors import ConfigError

                raise ConfigError(format_validation_error(e, f"config {config}" if config else "options")) from None
            raise
    return build_options(OrganismRecipe, values, f"config {config}" if config else "options")


def build_command(args: argparse.Namespace) -> int:
    from fgsn.organism.build import build_organism

    recipe = recipe_from_args(args)
    if getattr(args, "scenario", None):
        return _build_scenarios(args, recipe)
    paths = build_organism(recipe, cache_root=getattr(args, "cache_root", None),
                           force=getattr(args, "force", False), progress=not getattr(args, "quiet", False),
                           device=getattr(args, "device", "cpu"))
    if getattr(args, "print_paths", False):
        print(json.dumps(paths.to_dict(), indent=2, sort_keys=True))
    else:
        print(f"organism {paths.recipe_hash} ready in {paths.root}")
        for name in ("base", "aligned", "finetuned_full", "finetuned_lora"):
            print(f"  {name:15s} {getattr(paths, name)}")
    return 0


def _build_scenarios(args: argparse.Namespace, recipe) -> int:
    from dataclasses import asdict

    from fgsn.organism.scenarios import build_scenario, parse_scenarios

    built = [build_scenario(s.name, recipe, cache_root=getattr(args, "cache_root", None),
                            progress=not getattr(args, "quiet", False)) for s in parse_scenarios(args.scenario)]
    if getattr(args, "print_paths", False):
        print(json.dumps({m.scenario: {k: str(v) for k, v in asdict(m).items()} for m in built}, indent=2))
        return 0
    for m in built:
        print(f"scenario {m.scenario} (organism {m.recipe_hash}): aligned {m.aligned}, {m.kind} fine-tune {m.finetuned}")
    return 0
