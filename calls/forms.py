"""Forms of the staff console: placing a call, and the inputs of the live-call actions."""

from collections.abc import Iterable

from django import forms

from agents.models import Agent, TransferMode, TransferTarget

from . import services

SAY_MAX_CHARS = 500
TRANSFER_REASON_MAX_CHARS = 200


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
    target = forms.CharField(
        label="Transfer to",
        max_length=40,
        required=False,
        widget=forms.Select(attrs={"aria-label": "Transfer target"}),
    )

    # Empty means the target's own mode.
    mode = forms.ChoiceField(
        label="How",
        required=False,
        choices=[("", "As set for the target"), *TransferMode.choices],
        widget=forms.Select(attrs={"aria-label": "Cold or warm transfer"}),
    )
    # What a warm transfer's whisper tells the person called.
    reason = forms.CharField(
        label="Reason",
        max_length=TRANSFER_REASON_MAX_CHARS,
        required=False,
        strip=True,
        widget=forms.TextInput(
            attrs={
                "placeholder": "Why (told to the person in a warm transfer)",
                "aria-label": "Reason for the transfer",
                "autocomplete": "off",
            }
        ),
    )

    def __init__(self, *args, targets: Iterable[TransferTarget] = (), **kwargs) -> None:
        """`targets` fill the list, the default chosen, each with its mode; the live page's
        script fills it for each call instead."""
        super().__init__(*args, **kwargs)
        targets = list(targets)
        # The field's length limit still applies; the attribute is no HTML for a <select>.
        self.fields["target"].widget.attrs.pop("maxlength", None)
        self.fields["target"].widget.choices = [
            (target.name, f"{target.name} ({target.phone_number}, {target.mode})")
            for target in targets
        ]
        default = next((target.name for target in targets if target.is_default), None)
        if default is not None:
            self.initial.setdefault("target", default)


class SayForm(forms.Form):
    text = forms.CharField(
        max_length=SAY_MAX_CHARS,
        strip=True,
        error_messages={"required": "Type something for the agent to say."},
        widget=forms.TextInput(
            attrs={
                "placeholder": "A sentence for the agent to say",
                "aria-label": "Sentence for the agent to say",
                "autocomplete": "off",
            }
        ),
    )
