"""The `vae` app as a whole (vaecli.cli.app): --help, --version, the error boundary (one line, a
traceback only with --debug, the rank in a distributed run's lines), and which commands take --seed
(the random ones; deterministic ones refuse it)."""

from __future__ import annotations

import pytest
from conftest import one_error_line, vae

from vaecli.errors import DistributedError


@pytest.mark.parametrize("command", ["interpolate", "encode", "decode"])
def test_deterministic_commands_refuse_seed(command: str) -> None:
    r = vae(command, "--seed", 1)
    assert r.exit_code == 2
    assert "--seed" in r.output


@pytest.mark.parametrize("command", ["sample", "reconstruct", "traverse", "eval-kl"])
def test_random_commands_offer_seed(command: str) -> None:
    r = vae(command, "--help")
    assert r.exit_code == 0 and "--seed" in r.output


def test_info_unknown_run_and_debug_traceback(monkeypatch):
    assert "no run named" in one_error_line(vae("info", "nope"))
    monkeypatch.setenv("VAE_DEBUG", "1")
    r = vae("--debug", "info", "nope")
    assert r.exit_code != 0 and r.exception is not None


def test_help_and_version():
    r = vae("--help")
    assert r.exit_code == 0 and "train" in r.stdout
    r = vae("--version")
    assert r.exit_code == 0 and r.stdout.startswith("vaecli ")


def test_cli_error_lines_per_rank(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from vaecli.cli.app import _err

    mirrored = DistributedError("same as rank 0")
    mirrored.mirrored = True
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    _err("vae: error: same as rank 0", mirrored)
    _err("vae: error: only here", DistributedError("only here"))
    monkeypatch.setenv("RANK", "0")
    _err("vae: error: same as rank 0", mirrored)
    assert capsys.readouterr().err.splitlines() == ["vae (rank 1): error: only here", "vae: error: same as rank 0"]
