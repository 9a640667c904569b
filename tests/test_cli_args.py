"""The commands refuse bad numbers before they start anything, naming the option."""

from __future__ import annotations

import argparse

import pytest

from services.cli import main
from services.commands.argtypes import at_least_0, at_least_1, positive, tcp_port


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["bench", "--subjects", "0"], "--subjects: must be a whole number >= 1, got 0"),
        (["bench", "--warmup", "-1"], "--warmup: must be >= 0, got -1"),
        (["bench", "--seconds", "nan"], "--seconds: must be finite"),
        (["start", "--duration", "-5"], "--duration: must be > 0, got -5"),
        (["start", "--metrics-port", "99999"], "--metrics-port: must be a TCP port 0-65535"),
        (["evaluate", "--workers", "0"], "--workers: must be a whole number >= 1"),
        (["train", "--model", "imunet", "--minutes", "0"], "--minutes: must be > 0"),
        (["simulate", "--imu-rate", "0"], "--imu-rate: must be > 0"),
        (["replay", "x.xdf", "--speed", "-1"], "--speed: must be > 0"),
        (["bench", "--subjects", "two"], "--subjects: expected int, got 'two'"),
    ],
)
def test_bad_numbers_exit_2_naming_the_option(
    argv: list[str], said: str, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert said in capsys.readouterr().err


def test_good_numbers_pass_through() -> None:
    assert positive("0.5") == 0.5 and at_least_0("0") == 0.0
    assert at_least_1("3") == 3 and tcp_port("0") == 0 and tcp_port("65535") == 65535
    with pytest.raises(argparse.ArgumentTypeError):
        positive("inf")
