"""mod_wsgi entry point: the Paste Deploy pipeline in paste.ini next to this file.

mod_wsgi-express start-server securewsgi.wsgi ... (README.rst), or with a system
Apache: WSGIScriptAlias / /etc/myapi/securewsgi.wsgi
"""
import logging
import os

from paste.deploy import loadapp

# The identity filter logs refusals ("denied by rule admin: ...") to the
# securewsgi.* loggers; under mod_wsgi, stderr is Apache's error log.
logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")

application = loadapp("config:paste.ini", name="main",
                      relative_to=os.path.dirname(os.path.abspath(__file__)))
