"""Orchestration above the stages: the registry of edit methods (`registry`), one "edit several
variants, evaluate them together, report" loop (`compare.Comparison`) and the commands built on it
(`compare`, `demo`, `sweep`, `bench`, `repair`). The stages (locate, edit, evaluate, baselines,
organism) never import this package; the command line (fgsn.cli) and fgsn.api do."""
