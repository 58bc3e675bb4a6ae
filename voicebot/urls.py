from django.contrib import admin
from django.urls import path

from calls import recording_views, views

urlpatterns = [
    path("twilio/voice/incoming", views.voice_incoming, name="twilio-voice-incoming"),
    path("twilio/voice/status", views.voice_status, name="twilio-voice-status"),
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
    path("admin/", admin.site.urls),
]
