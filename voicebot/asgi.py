"""ASGI entry point: HTTP goes to Django, WebSockets through Channels.

Twilio's media stream is not a browser, sends no Origin and has no session, so it is
authenticated by signature and stream token inside its consumer. The staff socket is a
browser's: it gets the allowed-hosts origin check and session authentication.
"""

import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voicebot.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402  (needs Django set up first)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402
from django.urls import path  # noqa: E402

from calls.consumers import ListenConsumer, LiveCallsConsumer, MediaStreamConsumer  # noqa: E402
from calls.process import with_process_tasks  # noqa: E402
from voicebot import shutdown  # noqa: E402
from voicebot.limits import BodySizeLimit, limit_daphne_request_bodies  # noqa: E402

# Under daphne: on SIGTERM/SIGINT, hand live calls to another process before exiting.
shutdown.install()


def http_application(django_app=django_asgi_app):
    """Django over HTTP; in development it also serves static files, as runserver would.

    In production the proxy serves STATIC_ROOT (after collectstatic), so Python never does.
    A body over MAX_REQUEST_BODY_BYTES is refused with 413 before it is read into memory.
    """
    app = ASGIStaticFilesHandler(django_app) if settings.DEBUG else django_app
    return BodySizeLimit(app, max_bytes=settings.MAX_REQUEST_BODY_BYTES)


# daphne holds a whole body in memory before any middleware runs; refuse it as it arrives.
limit_daphne_request_bodies(settings.MAX_REQUEST_BODY_BYTES)


websocket_routes = URLRouter(
    [
        path("twilio/stream", MediaStreamConsumer.as_asgi()),
        path(
            "ws/calls/live",
            AllowedHostsOriginValidator(AuthMiddlewareStack(LiveCallsConsumer.as_asgi())),
        ),
        # Staff only, like the live feed: origin checked, session authenticated.
        path(
            "ws/calls/<uuid:call_id>/listen",
            AllowedHostsOriginValidator(AuthMiddlewareStack(ListenConsumer.as_asgi())),
        ),
    ]
)

# Each server process also keeps its streams' heartbeat and may run the call reconciler.
application = with_process_tasks(
    ProtocolTypeRouter({"http": http_application(), "websocket": websocket_routes})
)

# Everything loaded so far (Django, the apps, their modules) lives as long as the process:
# moved out of the collector's reach, so that its full collections, which stop the event
# loop, do not walk it again and again (docs/performance.md#the-collector).
gc.collect()
gc.freeze()
