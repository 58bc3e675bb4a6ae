import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from agents.management.commands.seed_demo import DEMO_NUMBER
from calls.simulator.call import (
    DEFAULT_DURATION_S,
    DEFAULT_FROM_NUMBER,
    DEFAULT_SERVER_URL,
    Action,
    SimulatedCall,
    SimulationError,
    parse_action,
)
from calls.simulator.dial import dial_outcome_normalise
from calls.simulator.placed import ANSWERS, PlacedCall

EXAMPLES = """
examples:
  manage.py simulate_call                                  the demo agent greets you; then type
  manage.py simulate_call --dtmf 0@6s                      press 0 six seconds in: a transfer
  manage.py simulate_call --dtmf 0@6s --dial-outcome busy  the person is busy: back to the agent
  manage.py simulate_call --say "I want a person" --dtmf "#"   say it when quiet, then press #
  manage.py simulate_call --audio question.wav --record heard.wav
  manage.py simulate_call --outbound +14155550123 --answered-by machine_end_beep
                                                           the default agent calls; a machine
                                                           answers and beeps

While a call runs in a terminal, type keys (0-9 * #) and Enter to press them, any other line
to say it, or Ctrl-C to hang up.
"""


def _action_type(kind: str):
    def parse(spec: str) -> Action:
        try:
            return parse_action(kind, spec)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


def _dial_outcome(spec: str) -> str:
    try:
        return dial_outcome_normalise(spec)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


class Command(BaseCommand):
    help = (
        "Place a simulated phone call to a running voicebot server, playing Twilio's part: "
        "the signed webhooks, the media stream in real time, and the REST API on loopback."
    )

    def create_parser(self, prog_name: str, subcommand: str, **kwargs):
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        parser.epilog = EXAMPLES
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        return parser

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--server", default=DEFAULT_SERVER_URL, help="where the server listens (%(default)s)"
        )
        parser.add_argument("--to", default=DEMO_NUMBER, help="number dialled (%(default)s)")
        parser.add_argument(
            "--from", dest="from_number", default=DEFAULT_FROM_NUMBER, help="caller (%(default)s)"
        )
        parser.add_argument(
            "--duration",
            type=float,
            default=DEFAULT_DURATION_S,
            help="hang up after this many seconds (%(default)s)",
        )
        for kind, metavar, what in (
            ("dtmf", "KEYS", "press KEYS (0-9 * #)"),
            ("say", "TEXT", "speak TEXT (espeak-ng)"),
            ("audio", "FILE", "play FILE (a WAV) as the caller"),
        ):
            parser.add_argument(
                f"--{kind}",
                dest="actions",
                action="append",
                type=_action_type(kind),
                default=[],
                metavar=f"{metavar}[@TIME]",
                help=f"{what} at TIME into the stream (5s, 2.5s, 800ms), or without @TIME in"
                " turn, once the line is quiet; repeatable",
            )
        parser.add_argument(
            "--dial-outcome",
            type=_dial_outcome,
            metavar="OUTCOME",
            help="what the person a transfer rings does: accept (press 1 at the whisper),"
            " reject (press 2), silent (no key), press:KEYS, busy, no-answer or failed"
            " (accept)",
        )
        parser.add_argument("--record", type=Path, help="write what the caller heard to a WAV")
        parser.add_argument(
            "--record-call",
            type=Path,
            nargs="?",
            const=Path("call-recording.wav"),
            help="write the call recording the server asked Twilio for (its agent records "
            "calls) to a dual-channel WAV: caller left, agent right (default %(const)s)",
        )
        parser.add_argument(
            "--rest-port",
            type=int,
            default=8010,
            help="port of the Twilio REST emulator; the server's TWILIO_API_BASE_URL (%(default)s)",
        )
        parser.add_argument(
            "--no-input", action="store_true", help="do not read keys and sentences from stdin"
        )
        parser.add_argument(
            "--no-transcript",
            action="store_true",
            help="do not read the transcript from the database the server shares",
        )
        outbound = parser.add_argument_group(
            "outbound calls",
            "An agent places the call (through the server's own service, on the database the"
            " server shares) and the simulator answers it as Twilio and the phone called.",
        )
        outbound.add_argument(
            "--outbound", metavar="NUMBER", help="the agent calls NUMBER instead of being called"
        )
        outbound.add_argument(
            "--answered-by",
            choices=list(ANSWERS),
            default="human",
            help="how NUMBER answers: Twilio's AnsweredBy verdict, or the call's status when"
            " nobody answers (%(default)s); a person or machine stays on for --duration",
        )
        outbound.add_argument(
            "--agent",
            default="",
            metavar="NAME",
            help="the agent that calls (default: the default agent)",
        )

    def handle(self, *args, **options) -> None:
        if options["outbound"]:
            self._outbound(options)
            return
        call = SimulatedCall(
            server_url=options["server"],
            to_number=options["to"],
            from_number=options["from_number"],
            duration_s=options["duration"],
            actions=options["actions"],
            rest_port=options["rest_port"],
            record_path=options["record"],
            call_recording_path=options["record_call"],
            watch_database=not options["no_transcript"],
            verbose=options["verbosity"] >= 2,  # -v 2: every mark too
            log=self.stdout.write,
            dial_outcome=options["dial_outcome"] or "accept",
        )
        interactive = not options["no_input"] and sys.stdin.isatty()
        if not interactive and not options["actions"]:
            self.stdout.write(
                "No script and no terminal input: the caller stays silent. Try --dtmf 0@5s,"
                ' --say "I want a person" or --dtmf "#" (see --help).'
            )
        self._run_and_sum_up(call, interactive)

    def _outbound(self, options: dict) -> None:
        inbound_only = [
            name
            for name, given in (
                ("--dtmf/--say/--audio", options["actions"]),
                ("--record", options["record"]),
                ("--record-call", options["record_call"]),
                ("--dial-outcome", options["dial_outcome"]),
            )
            if given
        ]
        if inbound_only:
            raise CommandError(f"{', '.join(inbound_only)}: for inbound calls, not --outbound")
        call = PlacedCall(
            to_number=options["outbound"],
            answered_by=options["answered_by"],
            agent_name=options["agent"],
            server_url=options["server"],
            duration_s=options["duration"],
            rest_port=options["rest_port"],
            log=self.stdout.write,
        )
        self._run_and_sum_up(call, interactive=False)

    def _run_and_sum_up(self, call: SimulatedCall | PlacedCall, interactive: bool) -> None:
        try:
            result = asyncio.run(self._run(call, interactive))
        except SimulationError as error:
            raise CommandError(str(error)) from None
        self.stdout.write("")
        for line in result.summary_lines():
            self.stdout.write(line)
        if result.errors:
            raise CommandError(f"the call had {len(result.errors)} error(s); see above")

    async def _run(self, call: SimulatedCall | PlacedCall, interactive: bool):
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows
            loop.add_signal_handler(signal.SIGINT, self._interrupt, call)
        if interactive:
            self.stdout.write("Type keys (0-9 * #) or a sentence and Enter; Ctrl-C hangs up.")
            loop.add_reader(sys.stdin, self._read_line, call)
        try:
            return await call.run()
        finally:
            if interactive:
                loop.remove_reader(sys.stdin)

    def _interrupt(self, call: SimulatedCall | PlacedCall) -> None:
        # The first Ctrl-C hangs up like a caller; a second one stops the command at once.
        asyncio.get_running_loop().remove_signal_handler(signal.SIGINT)
        call.hang_up()

    def _read_line(self, call: SimulatedCall) -> None:
        line = sys.stdin.readline()
        if not line:  # end of input: stop reading, the call goes on
            asyncio.get_running_loop().remove_reader(sys.stdin)
            return
        text = line.strip()
        if not text:
            return
        if all(key in "0123456789*#" for key in text):
            call.press(text)
        else:
            call.say(text)
