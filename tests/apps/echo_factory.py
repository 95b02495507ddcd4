"""Paste Deploy factory for echo.py: tests/test_other_servers.py points the shipped
paste.ini files' [app:app] here, to see every environ key the identity filter left."""
from echo import app


def app_factory(global_conf, **local_conf):
    return app
