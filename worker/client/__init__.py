"""Libraries for services that verify or sign tokens and follow events.

They import nothing of the server (no Celery, SQLAlchemy or FastAPI): only `worker.core`."""
