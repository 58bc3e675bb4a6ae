"""A staff member's HTTP session with a real server process, and the world it acts on."""

import re

import aiohttp
from asgiref.sync import sync_to_async
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.contrib.auth.models import Permission, User

from agents.models import Agent

PUBLIC_ORIGIN = "https://voicebot.example.com"


@sync_to_async
def create_world() -> None:
    Agent.objects.create(
        name="Greeter",
        phone_number="+14155550100",
        greeting="Hello and welcome, this greeting is long enough to be interrupted.",
        # A call left quiet for a minute (QUIET_SECONDS) must not end on its own meanwhile.
        idle_timeout_seconds=600,
    )
    # Hashed as the servers (production settings) hash, not with the suite's fast hasher.
    hasher = PBKDF2PasswordHasher()
    password = hasher.encode("operator-password", hasher.salt(), iterations=1000)
    staff = User.objects.create(username="operator", password=password, is_staff=True)
    codenames = ["view_call", "hangup_call", "clear_audio", "say_on_call"]
    staff.user_permissions.set(Permission.objects.filter(codename__in=codenames))


class StaffBrowser:
    """A staff member's HTTP session with a server, signed in through the admin login."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        # The server sets Secure cookies (production settings) and sits behind a TLS
        # proxy in real life: say so with X-Forwarded-Proto and carry cookies by hand.
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        self.cookies: dict[str, str] = {}

    def _headers(self, **extra: str) -> dict[str, str]:
        cookie = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        return {"X-Forwarded-Proto": "https", "Cookie": cookie, **extra}

    def _keep_cookies(self, response: aiohttp.ClientResponse) -> None:
        for name, morsel in response.cookies.items():
            self.cookies[name] = morsel.value

    async def login(self, username: str, password: str) -> None:
        async with self.http.get(f"{self.base_url}/admin/login/", headers=self._headers()) as page:
            self._keep_cookies(page)
            html = await page.text()
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)
        form = {
            "username": username,
            "password": password,
            "csrfmiddlewaretoken": token,
            "next": "/admin/",
        }
        async with self.http.post(
            f"{self.base_url}/admin/login/",
            data=form or None,
            allow_redirects=False,
            headers=self._headers(Referer=f"{PUBLIC_ORIGIN}/admin/login/", Origin=PUBLIC_ORIGIN),
        ) as response:
            assert response.status == 302, await response.text()
            self._keep_cookies(response)

    async def act(self, call_id: str, action: str, **form: str) -> dict:
        status, body = await self.attempt(call_id, action, **form)
        assert status == 200, body
        return body

    async def attempt(self, call_id: str, action: str, **form: str) -> tuple[int, dict]:
        """Take an action as the live page does; (HTTP status, JSON answer)."""
        async with self.http.post(
            f"{self.base_url}/admin/calls/call/{call_id}/{action}/",
            data=form or None,
            headers=self._headers(
                Accept="application/json",
                Origin=PUBLIC_ORIGIN,
                Referer=f"{PUBLIC_ORIGIN}/admin/calls/call/live/",
                **{"X-CSRFToken": self.cookies["csrftoken"]},
            ),
        ) as response:
            return response.status, await response.json()

    async def close(self) -> None:
        await self.http.close()


