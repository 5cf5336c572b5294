"""The Celery shell: app configuration, tasks, the beat scheduler, the broker guard."""
