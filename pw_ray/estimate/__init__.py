"""``pw-ray estimate``: what an experiment will cost before anything runs (points, STAC requests,
scenes, bytes, chips, CPU- and GPU-hours, checkpoint storage, cost), each figure with its source.

:mod:`~pw_ray.estimate.rates` (calibration, documented figures, assumptions),
:mod:`~pw_ray.estimate.ingest_model` (search, scenes and bytes of ingest),
:mod:`~pw_ray.estimate.stages` (the arithmetic per stage), :mod:`~pw_ray.estimate.report` (the text).
"""

from pw_ray.estimate.rates import Calibration, CalibrationError, load_calibration, resolve_rates
from pw_ray.estimate.report import format_estimate
from pw_ray.estimate.stages import Estimate, StageEstimate, estimate

__all__ = ["Calibration", "CalibrationError", "Estimate", "StageEstimate", "estimate", "format_estimate",
           "load_calibration", "resolve_rates"]
