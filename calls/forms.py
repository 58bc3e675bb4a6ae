"""Forms of the staff console: placing a call, and the inputs of the live-call actions."""

from django import forms

from agents.models import Agent

from . import services

SAY_MAX_CHARS = 500


class PlaceCallForm(forms.Form):
    agent = forms.ModelChoiceField(
        queryset=Agent.objects.none(),
        empty_label=None,
        help_text="The call comes from this agent's number, and the agent talks.",
    )
    to_number = forms.CharField(
        label="Number to call",
        max_length=32,
        help_text="In E.164, with the country code, e.g. +14155550100.",
        widget=forms.TextInput(
            attrs={"placeholder": "+14155550100", "autocomplete": "off", "inputmode": "tel"}
        ),
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Only an active agent with a number of its own can place a call.
        self.fields["agent"].queryset = (
            Agent.objects.active().exclude(phone_number__isnull=True).exclude(phone_number="")
        )

    def clean_to_number(self) -> str:
        try:
            return services.e164(self.cleaned_data["to_number"])
        except services.CallControlError as error:
            raise forms.ValidationError(str(error)) from None


class TransferForm(forms.Form):
    # Empty means the agent's default target; the service checks the name against the call.
    target = forms.CharField(max_length=40, required=False)


class SayForm(forms.Form):
    text = forms.CharField(
        max_length=SAY_MAX_CHARS,
        strip=True,
        error_messages={"required": "Type something for the agent to say."},
    )
