"""The artifacts the stages hand each other, one module and one schema each (JSON + safetensors):

- `masks`: bit-packed neuron masks (`masks.safetensors`);
- `locate_run`: a locate run folder (`locate.json` + masks), `LocateRun.save/load`;
- `manifest`: the edit manifest beside every edited checkpoint (`fgsn-manifest.json`);
- `card`: the model card (`README.md`) and rerunnable config (`fgsn/config.yaml`) of a checkpoint;
- `eval_run`: an evaluation run folder (`eval.json`, per-model records, `results.json`);
- `provenance`: the inputs (paths, sha256) and versions that locate runs and manifests record.

Every stage may import these; they import only the models layer and the foundation (config,
atomic, errors), never a stage.
"""
