from django.contrib import admin
from django.urls import path
from django.views.generic import RedirectView

from calls import profile_views, recording_views, views

urlpatterns = [
    path("twilio/voice/incoming", views.voice_incoming, name="twilio-voice-incoming"),
    path("twilio/voice/status", views.voice_status, name="twilio-voice-status"),
    path("twilio/voice/amd", views.voice_amd, name="twilio-voice-amd"),
    path("twilio/voice/connect-action", views.connect_action, name="twilio-connect-action"),
    path("twilio/voice/dial-action", views.dial_action, name="twilio-dial-action"),
    path("twilio/voice/whisper", views.whisper, name="twilio-whisper"),
    path("twilio/voice/whisper-answer", views.whisper_answer, name="twilio-whisper-answer"),
    path("twilio/voice/dial-result", views.dial_result, name="twilio-dial-result"),
    path("twilio/recording/status", views.recording_status, name="twilio-recording-status"),
    path(
        "console/recordings/<str:recording_sid>.wav",
        recording_views.recording_audio,
        name="recording-audio",
    ),
    path("twilio/stream/status", views.stream_status, name="twilio-stream-status"),
    path("healthz", views.healthz, name="healthz"),
    # Ahead of the admin's own patterns, which would take "profile/" for an app's name.
    path("admin/profile/", admin.site.admin_view(profile_views.profile), name="staff-profile"),
    path("admin/", admin.site.urls),
    # Nothing else is served to people: the root leads to the console.
    path("", RedirectView.as_view(pattern_name="admin:index"), name="home"),
]
