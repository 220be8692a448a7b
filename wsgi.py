"""The WSGI entry point: ``gunicorn -c python:arw_models.gunicorn_conf wsgi:app``."""

from arw_models import create_app

app = create_app()
