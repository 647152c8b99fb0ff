"""Other defences behind the same interface as fgsn, for side-by-side comparison (`fgsn compare`).

Weight-editing baselines (each writes a checkpoint loadable by transformers plus an
`fgsn-manifest.json` in fgsn's schema):
- SafeLoRA (Hsu et al. 2024): `fgsn.baselines.safelora.run_safelora`
- RESTA (Bhardwaj et al. 2024): `fgsn.baselines.resta.run_resta`
- Wanda safety-neuron pruning (Sun et al. 2024 scores, Antidote-style removal): `fgsn.baselines.wanda.run_wanda`
- IRR (Wu et al. 2025): `fgsn.baselines.irr.run_irr`
- SGDG rollback (Yang et al. 2025): `fgsn.baselines.sgdg.run_sgdg`

Inference-time baseline (no checkpoint; an evaluation setting):
- Self-Reminder (Xie et al. 2023): `fgsn.baselines.self_reminder.SelfReminder`

Each is registered by name in fgsn.pipeline.registry (with FGSN's presets and the edit stage's
other editors); run one with `fgsn.api.baseline(NAME, ...)` or `fgsn baseline NAME`, all of them
side by side with `fgsn.api.compare(...)` or `fgsn compare`.
"""
