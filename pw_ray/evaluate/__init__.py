"""Downstream evaluation: methods (plain PyTorch/NumPy) and the Ray Tune grid."""
