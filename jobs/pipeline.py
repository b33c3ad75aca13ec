"""`ray job submit --working-dir . -- python jobs/pipeline.py --config configs/X.yaml [--root URI]`.

Runs every stage in order (plan, ingest, pretrain, evaluate, analyze, report); each stage
skips what is done, so a resubmitted job resumes where the last one stopped.
"""

import os
import sys

# Under `ray job submit --working-dir .` the checkout is the cwd: make it importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pw_ray.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
