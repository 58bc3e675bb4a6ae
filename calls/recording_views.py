"""A call's recording, played to staff through the project: Twilio's media, streamed through.

The `<audio>` element on a call's page points here. The browser never sees Twilio's URL or
the account's credentials, and only staff allowed to hear recordings get the audio. Its
Range requests (seeking) are passed to Twilio and Twilio's 206 and Content-Range passed
back, chunk by chunk: a recording is never held whole in memory.
"""

from asgiref.sync import sync_to_async
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseForbidden,
    HttpResponseNotFound,
    StreamingHttpResponse,
)
from django.views.decorators.http import require_GET

from . import telephony
from .admin_views import LISTEN_PERMISSION, may
from .models import Recording, RecordingStatus


@sync_to_async
def _allowed(user, recording_sid: str) -> tuple[bool, bool]:
    """(may listen, the recording exists and has audio)."""
    allowed = user.is_active and user.is_staff and may(user, LISTEN_PERMISSION)
    exists = Recording.objects.filter(sid=recording_sid, status=RecordingStatus.COMPLETED).exists()
    return allowed, exists


@require_GET
async def recording_audio(request: HttpRequest, recording_sid: str) -> HttpResponse:
    user = await request.auser()
    if not user.is_authenticated:
        return HttpResponseForbidden("Log in to the console to play recordings.")
    allowed, exists = await _allowed(user, recording_sid)
    if not allowed:
        return HttpResponseForbidden("You do not have permission to play recordings.")
    if not exists:
        return HttpResponseNotFound("No such recording, or it is not finished yet.")
    media = telephony.RecordingMedia(recording_sid, range_header=request.headers.get("Range"))
    try:
        await media.open()
    except telephony.TelephonyError as error:
        return HttpResponse(str(error), status=502, content_type="text/plain; charset=utf-8")
    if media.status not in (200, 206):
        await media.close()
        if media.status == 416:
            response = HttpResponse(status=416)
            if "Content-Range" in media.headers:
                response["Content-Range"] = media.headers["Content-Range"]
            return response
        status = 404 if media.status == 404 else 502
        return HttpResponse(
            f"Twilio answered {media.status} for the recording.",
            status=status,
            content_type="text/plain; charset=utf-8",
        )
    response = StreamingHttpResponse(media.chunks(), status=media.status)
    for name, value in media.headers.items():
        response[name] = value
    response.setdefault("Content-Type", "audio/wav")
    response.setdefault("Accept-Ranges", "bytes")
    response["Cache-Control"] = "private, no-store"
    return response
