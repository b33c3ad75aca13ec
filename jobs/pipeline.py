"""`ray job submit --working-dir . -- python jobs/pipeline.py --config configs/X.yaml [--root URI]`.

Runs every stage in order (plan, ingest, pretrain, evaluate, analyze, report); each stage
skips what is done, so a resubmitted job resumes where the last one stopped.

``--config`` is a path or URI (``file://``, ``s3://``, ``gs://``); ``--root`` overrides the config's
storage root. Under ``ray job submit`` the driver joins the cluster the job was submitted to
(the job supervisor's ``RAY_ADDRESS``). Exit status: 0 done; 1 a stage failed; 2 bad arguments
or config. On failure the last line of the job's logs is the reason:
``pw-ray <stage> failed: <Error>: <message>``.
"""

import os
import sys

# Under `ray job submit --working-dir .` the checkout is the cwd: make it importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pw_ray.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
