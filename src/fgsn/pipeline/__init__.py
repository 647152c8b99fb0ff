"""Orchestration above the stages: what runs several stages in a row (`project`: locate, then the
edit), the registry of edit methods (`registry`), one "edit several variants, evaluate them together,
report" loop (`compare.Comparison`) and the commands built on it (`compare`, `demo`, `sweep`, `bench`,
`repair`). Between the stages it reads and writes only their artifacts (fgsn.artifacts). The stages
(locate, edit, evaluate, baselines, organism) never import this package; the command line (fgsn.cli)
and fgsn.api do."""
