"""The HTTP gateway: FastAPI app, routers, settings, errors, auth and metrics.

    from avserve.gateway import GatewaySettings, create_app
    app = create_app(GatewaySettings(repository="model_repository"))
"""

from .app import create_app
from .settings import GatewaySettings, get_settings

__all__ = ["GatewaySettings", "create_app", "get_settings"]
