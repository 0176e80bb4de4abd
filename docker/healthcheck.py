"""Container healthcheck (HEALTHCHECK of the recpipe images; compose sets per-service ones).

With RECPIPE_HEALTH_URL set (a server: `recpipe serve`, MLflow, Airflow's api-server) it GETs
that URL and needs a 2xx; without it (a batch container) it checks that the pipeline's stack
imports, which catches a broken build. Exit 0 = healthy, 1 = unhealthy.
"""

import os
import sys
import urllib.request


def main() -> int:
    url = os.environ.get("RECPIPE_HEALTH_URL")
    try:
        if url:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return 0 if 200 <= resp.status < 300 else 1
        import mlflow  # noqa: F401
        import pyspark  # noqa: F401
        import torch  # noqa: F401

        import pipeline_tasks  # noqa: F401

        return 0
    except Exception as exc:  # any failure is "unhealthy", with the reason in `docker inspect`
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
