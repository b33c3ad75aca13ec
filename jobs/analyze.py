"""`ray job submit --working-dir . -- python jobs/analyze.py --config configs/X.yaml [--root URI]`.

A thin entrypoint: parses the arguments, runs the analyze stage, exits non-zero on failure
with the reason on the last line. Resubmitting resumes (the stage is idempotent).

``--config`` is a path or URI (``file://``, ``s3://``, ``gs://``); ``--root`` overrides the config's
storage root. Exit status: 0 done (or already done); 1 the stage failed; 2 bad arguments or
config. The last line of a failed job's logs: ``pw-ray analyze failed: <Error>: <message>``.
"""

import os
import sys

# Under `ray job submit --working-dir .` the checkout is the cwd: make it importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pw_ray.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["analyze", *sys.argv[1:]]))
