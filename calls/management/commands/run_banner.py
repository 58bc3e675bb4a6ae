from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

# What the Makefile's HOST and PORT default to: a hint leaves out what need not be typed.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


class Command(BaseCommand):
    help = "Say where `make run` is about to listen, and what to do next."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default=DEFAULT_HOST)
        parser.add_argument("--port", type=int, default=DEFAULT_PORT)

    def handle(self, *args, host: str, port: int, **options) -> None:
        base = f"http://{host}:{port}"
        # `make call` must reach the same server, so its hint repeats a non-default address.
        overrides = [
            *([f"HOST={host}"] if host != DEFAULT_HOST else []),
            *([f"PORT={port}"] if port != DEFAULT_PORT else []),
        ]
        make_call = " ".join(["make call", *overrides])
        has_staff = get_user_model().objects.filter(is_staff=True, is_active=True).exists()
        lines = [
            "",
            f"  voicebot is listening on {base}/",
            f"  The staff console: {base}/admin/  (live calls: {base}/admin/calls/call/live/)",
        ]
        if not has_staff:
            lines.append("  No staff login yet? In another terminal run:  make superuser")
        lines += [f"  Try a whole call with no phone, in another terminal:  {make_call}", ""]
        self.stdout.write("\n".join(lines))
