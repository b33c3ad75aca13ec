"""The pretrain stage: one SatMAE per set on Ray Train (``trainer``).

The step, the transforms and the metrics run without Ray.
"""
