"""Locate: activation probes, safety-layer search, neuron scores and masks."""
