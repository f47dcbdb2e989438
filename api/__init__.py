"""The HTTP API of cargowatch (contract §7): FastAPI over one ``Runtime``.

``create_app(runtime)`` builds the app; its lifespan runs the runtime. Serve it with
``ApiServer`` (a uvicorn server that ends live streams as soon as shutdown begins). Keys and
roles are in ``api.auth``, the error shape in ``api.errors``; one router per resource in
``api.routers``.
"""

from api.app import begin_shutdown, create_app
from api.auth import Principal, Role
from api.server import ApiServer

__all__ = ["ApiServer", "Principal", "Role", "begin_shutdown", "create_app"]
