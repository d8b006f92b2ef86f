"""Shared by the Ansible tests: SIGTERM (scripts/test.sh stopping the checks after a failing
phase) ends the run as Ctrl-C does, so fixtures still take their compose stacks down instead
of leaving them on the engine."""
import signal


def _interrupt(signum, frame):
    raise KeyboardInterrupt


signal.signal(signal.SIGTERM, _interrupt)
