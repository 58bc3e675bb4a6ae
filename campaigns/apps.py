from django.apps import AppConfig
from django.conf import settings


class CampaignsConfig(AppConfig):
    name = "campaigns"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Each server process runs a dialler beside its heartbeat, unless turned off (then
        # `manage.py run_campaigns` does the dialling).
        if settings.CAMPAIGN_DIALLER:
            from calls import process

            from .dialler import dialler_loop

            process.loop_register("campaign-dialler", lambda: dialler_loop(process.holder_name()))
