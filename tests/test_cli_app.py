"""Commands that are deterministic take no --seed; the random ones do."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from vaecli.cli import app


@pytest.mark.parametrize("command", ["interpolate", "encode", "decode"])
def test_deterministic_commands_refuse_seed(command: str) -> None:
    r = CliRunner().invoke(app, [command, "--seed", "1"])
    assert r.exit_code == 2
    assert "--seed" in r.output


@pytest.mark.parametrize("command", ["sample", "reconstruct", "traverse", "eval-kl"])
def test_random_commands_offer_seed(command: str) -> None:
    r = CliRunner().invoke(app, [command, "--help"])
    assert r.exit_code == 0 and "--seed" in r.output
