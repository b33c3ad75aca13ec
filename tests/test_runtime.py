"""Process set-up: Ray's own output goes to a log file, credentials stay out of Ray's runtime envs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ray_messages_and_warnings_go_to_the_log_file_while_errors_and_other_warnings_stay_on_the_console(tmp_path):
    # A process of its own: the routing changes Ray's loggers and warnings.showwarning for the process.
    code = textwrap.dedent(f"""
        import logging, os, warnings
        import ray, ray.data
        from pw_ray.runtime import route_ray_output, setup_logging
        setup_logging("INFO")
        path = route_ray_output({str(tmp_path)!r})
        print("LOG", path)
        logging.getLogger("ray").warning("ray-driver-warning")
        logging.getLogger("ray.data").info("ray-data-info")
        logging.getLogger("ray.train").warning("ray-train-warning")
        logging.getLogger("ray").error("ray-driver-error")
        ray_file = os.path.join(os.path.dirname(ray.__file__), "data", "x.py")
        warnings.warn_explicit("warning-from-inside-ray", UserWarning, ray_file, 1)
        warnings.warn_explicit("warning-from-elsewhere", UserWarning, "/elsewhere/y.py", 1)
        logging.getLogger("pw_ray").info("pw-ray-line")
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    log_file = Path(r.stdout.split("LOG ", 1)[1].split()[0])
    assert log_file == tmp_path / "pw-ray-driver.log"
    logged = log_file.read_text()
    for text in ("ray-driver-warning", "ray-data-info", "ray-train-warning", "ray-driver-error",
                 "warning-from-inside-ray"):
        assert text in logged, text
    for text in ("ray-driver-warning", "ray-data-info", "ray-train-warning", "warning-from-inside-ray"):
        assert text not in r.stderr, text
    for text in ("ray-driver-error", "warning-from-elsewhere", "pw-ray-line"):
        assert text in r.stderr, text
    assert "warning-from-elsewhere" not in logged and "pw-ray-line" not in logged


def test_tune_trials_get_no_aws_credentials_in_their_runtime_env(monkeypatch):
    from ray.tune.execution import class_cache

    from pw_ray.runtime import keep_credentials_out_of_tune

    from pw_ray.runtime import CREDENTIAL_VARS

    # Tune's own list (a grid run earlier in this test session has already taken the keys out).
    monkeypatch.setattr(class_cache, "ENV_VARS_TO_PROPAGATE",
                        set(class_cache.ENV_VARS_TO_PROPAGATE) | set(CREDENTIAL_VARS))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDPWRAYTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "pwray-not-a-real-secret")
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "3")

    class Trainable:
        pass

    def env_vars() -> dict:
        return class_cache._ActorClassCache().get(Trainable)._default_options["runtime_env"]["env_vars"]

    assert env_vars()["AWS_SECRET_ACCESS_KEY"] == "pwray-not-a-real-secret"  # what Tune does by itself
    keep_credentials_out_of_tune()
    after = env_vars()
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(after)
    assert after["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "3"  # Ray's own settings still travel


def test_ray_init_notices_and_ray_data_lines_reach_the_log_file_not_the_console(tmp_path):
    # The order of a real driver: Ray imported, ray.data not yet; ray.init's notices (e.g. the
    # token-authentication one) come before its log folder exists; datasets started at once (the
    # sets at once) make Ray Data log a line per dataset at INFO on its own console handler.
    code = textwrap.dedent(f"""
        import logging, sys
        from pw_ray.runtime import hold_ray_messages, route_ray_output, setup_logging
        setup_logging("INFO")
        assert "ray.data" not in sys.modules
        held = hold_ray_messages()
        logging.getLogger("ray").warning("notice-during-ray-init")
        path = route_ray_output({str(tmp_path)!r}, held)
        print("LOG", path)
        from ray.data._internal import logging as data_logging
        data_logging.register_dataset_logger("dataset_one")
        data_logging.register_dataset_logger("dataset_two")  # "registers for logging while another …"
        logging.getLogger("ray.data").warning("ray-data-warning")
        logging.getLogger("ray.data").error("ray-data-error")
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    logged = (tmp_path / "pw-ray-driver.log").read_text()
    for text in ("notice-during-ray-init", "ray-data-warning", "registers for logging"):
        assert text in logged, text
        assert text not in r.stderr, text
    assert "ray-data-error" in r.stderr
