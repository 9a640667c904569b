"""Sharded datasets: byte-identical per seed whatever the workers, readable, self-describing."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from fusion.dataset import (
    DatasetReader,
    DatasetSpec,
    sequence_params,
    sequence_seed,
    write_dataset,
)
from fusion.noise import NoiseParams
from fusion.synth import SequenceParams, generate_sequence
from services.commands import synth as synth_command

#: 5 sequences of 3 s in shards of 2 (3 shards, the last one short)
SPEC = DatasetSpec(hours=5 * 3 / 3600, seed=7, sequence_seconds=3.0, sequences_per_shard=2)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    one = tmp_path_factory.mktemp("ds1")
    two = tmp_path_factory.mktemp("ds2")
    done: list[float] = []
    # in this process vs. two spawned worker processes
    write_dataset(one, SPEC.hours, SPEC.seed, progress=done.append, workers=1, spec=SPEC)
    write_dataset(two, SPEC.hours, SPEC.seed, workers=2, spec=SPEC)
    assert np.allclose(done, np.arange(1, 6) * 3 / 3600)
    return one, two


def test_same_seed_byte_identical_whatever_the_workers(written: tuple[Path, Path]) -> None:
    one, two = written
    names = sorted(p.name for p in one.iterdir())
    assert names == ["manifest.json", "shard-00000.npz", "shard-00001.npz", "shard-00002.npz"]
    assert names == sorted(p.name for p in two.iterdir())
    for name in names:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name


def test_reader_returns_what_the_generator_made(written: tuple[Path, Path]) -> None:
    reader = DatasetReader(written[0])
    assert len(reader) == 5
    assert reader.verify() == []
    seqs = list(reader)
    assert [s["meta"]["index"] for s in seqs] == list(range(5))
    for i in (0, 3, 4):
        params = sequence_params(SPEC, i)
        want = generate_sequence(params, sequence_seed(SPEC.seed, i)).arrays
        got = reader[i]
        assert got["meta"]["activity"] == params.activity
        assert got["meta"]["speed"] == params.speed
        assert got["meta"]["pathology"] == params.pathology
        for key, arr in want.items():
            assert got[key].dtype == arr.dtype, key
            np.testing.assert_array_equal(got[key], arr, err_msg=key)
    np.testing.assert_array_equal(reader[-1]["imu"], seqs[4]["imu"])
    with pytest.raises(IndexError):
        reader[5]
    # shards are ordinary .npz files
    with np.load(written[0] / "shard-00000.npz") as z:
        assert z["frame_offsets"].tolist() == [0, 180, 360]


def test_manifest_records_every_parameter(written: tuple[Path, Path]) -> None:
    m = json.loads((written[0] / "manifest.json").read_text())
    assert m["format"] == "gait-stream-synth" and m["seed"] == 7
    assert m["n_sequences"] == 5 and m["n_frames"] == 900
    base = m["spec"]["base"]
    assert set(base) == {f.name for f in fields(SequenceParams)}
    assert set(base["noise"]) == {f.name for f in fields(NoiseParams)}
    assert base["noise"]["joint_jitter_mm"] == 12.0
    assert m["names"]["segments"][0] == "head"
    assert {"numpy", "scipy", "gait_stream"} <= set(m["versions"])
    assert all(len(s["sha256"]) == 64 for s in m["shards"])
    with np.load(written[0] / "shard-00001.npz") as z:
        assert set(m["arrays"]) <= set(z.files)


def test_verify_detects_a_damaged_shard(written: tuple[Path, Path], tmp_path: Path) -> None:
    for p in written[0].iterdir():
        (tmp_path / p.name).write_bytes(p.read_bytes())
    shard = tmp_path / "shard-00001.npz"
    data = bytearray(shard.read_bytes())
    data[-200] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert DatasetReader(tmp_path).verify() == ["shard-00001.npz"]


def test_bad_parameters_and_directories(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"DatasetSpec.hours=0: must be a number of hours > 0"):
        write_dataset(tmp_path / "x", 0, 1)
    with pytest.raises(ValueError, match="sequences_per_shard=0"):
        DatasetSpec(hours=1.0, sequences_per_shard=0)
    with pytest.raises(ValueError, match="activities=\\('fly',\\)"):
        DatasetSpec(hours=1.0, activities=("fly",))
    with pytest.raises(ValueError, match=r"duration=0.0: too short"):
        DatasetSpec(hours=1.0, sequence_seconds=0.0)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"not empty and not a gait-stream dataset"):
        write_dataset(tmp_path, 0.001, 1)
    with pytest.raises(FileNotFoundError, match=r"no manifest\.json"):
        DatasetReader(tmp_path)


def cli_main(argv: list[str]) -> int:
    """`gait-stream <argv>` with only this command registered (services/cli.py finds it)."""
    parser = argparse.ArgumentParser(prog="gait-stream")
    synth_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_synth_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "D"
    argv = ["synth", "--hours", "0.002", "--out", str(out), "--seed", "1"]
    argv += ["--sequence-seconds", "3.6", "--workers", "1", "--no-progress"]
    assert cli_main(argv) == 0
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert cli_main(argv) == 0  # again, into the same directory: identical files
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first
    assert "wrote 2 sequences" in capsys.readouterr().out
    assert cli_main(["synth", "--hours", "0", "--out", str(out)]) == 2
    assert "hours=0.0: must be a number of hours > 0" in capsys.readouterr().err
