"""Orchestration above the stages: what runs several stages in a row (`project`: locate, then the
edit), reading and writing only the artifacts between them (fgsn.artifacts)."""
