"""`celery -A worker worker` and `celery -A worker beat` find the app here.

Importing this module reads the settings and refuses, in one line, to start without a broker.
"""

from worker.jobs.app import load_app

app = load_app()
