"""pw-ray: where should a geospatial foundation model be pretrained? The experiment on Ray.

Stages (``pw_ray/experiment.py``): plan (``plan.py``) → ingest (``ingest/``) → pretrain
(``pretrain/``, ``models/``) → evaluate (``evaluate/``) → analyze and report (``analyze/``); the
foundations they share are ``config.py``, ``storage.py``, ``bands.py``, ``regions.py`` and
``runtime.py``; ``cli.py`` is the ``pw-ray`` command. docs/development.md maps every module.
"""
