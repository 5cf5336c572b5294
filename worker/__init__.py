"""keyrotor: JWT signing-key rotation for many realms.

`celery -A worker` finds the Celery app in `worker.celery`.
"""
