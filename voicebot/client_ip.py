"""The address a request came from, as far as we can trust it (for login throttling).

Behind TRUSTED_PROXY_COUNT proxies, the client is the entry that many places from the right
of X-Forwarded-For: each proxy appends the address it was reached from, so the rightmost
entries are our proxies' own words, and everything to their left was written by the client
and may be made up (a client that changes it at will must not get a fresh count of login
attempts each time). Without proxies, it is the socket's peer.
"""

from typing import Any

from django.conf import settings


def client_ip(request: Any) -> str:
    remote = request.META.get("REMOTE_ADDR") or ""
    count = settings.TRUSTED_PROXY_COUNT
    if count <= 0:
        return remote
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
    # Fewer entries than proxies: the request did not come through them all; trust no header.
    return hops[-count] if len(hops) >= count else remote
