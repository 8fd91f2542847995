"""The headless demo (`python -m actwidget`, `python -m actwidget.demo`) and the command line,
on small IDX data made here; no downloads."""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision

from actwidget import __main__ as cli
from actwidget import data, demo
from actwidget.stats import RunStats

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_idx(folder, n_train: int, n_test: int, gz: bool = True) -> None:
    """The four Fashion-MNIST files, gzipped as in Debian's package (or not, as torchvision's
    raw folder holds them), with random content."""
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=gen)
        labels = torch.arange(n, dtype=torch.uint8) % 10
        for kind, t, magic in (("images-idx3", images, 0x0803), ("labels-idx1", labels, 0x0801)):
            payload = struct.pack(f">{1 + t.ndim}i", magic, *t.shape) + t.numpy().tobytes()
            name = f"{split}-{kind}-ubyte"
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(payload))
            else:
                (folder / name).write_bytes(payload)


@pytest.fixture
def small_data(monkeypatch, tmp_path):
    """A tmp cache, a fake Debian folder of 96 train / 32 test images, and no downloads."""
    monkeypatch.setenv("ACTWIDGET_DATA", str(tmp_path / "cache"))
    debian = tmp_path / "debian"
    _write_idx(debian, 96, 32)
    monkeypatch.setattr(data, "DEBIAN_DIR", debian)

    def no_download(self):
        raise RuntimeError("network disabled in tests")

    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "download", no_download)


def test_main_writes_plots_and_stats(small_data, tmp_path, capsys):
    out = tmp_path / "out"
    assert demo.main(["--epochs", "2", "--bs", "16", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed
    names = ["mean_std.png", "hist.png", "near_zero.png"]
    for name in [*names, "stats.npz"]:
        assert name in printed
    assert "epoch 2/2" in printed  # terminal progress

    for name in names:
        png = (out / name).read_bytes()
        assert png.startswith(PNG_MAGIC)
        width, height = struct.unpack(">II", png[16:24])
        assert width >= 300 and height >= 200, (name, width, height)
        assert len(png) > 5_000, (name, len(png))  # drawn, not blank

    stats = RunStats.load(out / "stats.npz")
    assert len(stats) == 5  # the CNN's five layers
    for layer in stats.values():
        assert layer.batches.sum() == 2 * 6  # 2 epochs x 96/16 training batches
        assert np.isfinite(layer.mean).all() and (layer.std > 0).all()


def test_default_out_is_a_new_temp_folder(small_data, tmp_path, monkeypatch):
    monkeypatch.setattr(demo.tempfile, "tempdir", str(tmp_path))
    files = demo.run(epochs=1, bs=32)
    folder = files["stats"].parent
    assert folder.parent == tmp_path and folder.name.startswith("actwidget-demo-")
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["mean_std.png", "hist.png", "near_zero.png", "stats.npz"]
    )
    assert files == {
        "mean_std": folder / "mean_std.png",
        "hist": folder / "hist.png",
        "near_zero": folder / "near_zero.png",
        "stats": folder / "stats.npz",
    }


def test_rejects_bad_options(capsys):
    with pytest.raises(SystemExit):
        demo.main(["--epochs", "0"])
    assert "must be >= 1" in capsys.readouterr().err


def test_help_lists_both_commands(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    assert out.startswith("usage: python -m actwidget ")
    assert "demo" in out and "stop" in out and "--init kaiming" in out


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--epochs", "0"], "argument --epochs: must be >= 1, got 0"),
        (["demo", "--bs", "many"], "expected a whole number >= 1, got 'many'"),
        (["--lr", "-1"], "argument --lr: must be > 0"),
        (["--init", "xavier"], "invalid choice: 'xavier'"),
        (["fit"], "invalid choice: 'fit' (choose from 'demo', 'stop')"),
        (["stop"], "the following arguments are required: DIR"),
    ],
)
def test_bad_input_is_one_line(capsys, argv, says):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.count("\n") == 1 and says in err and "--help" in err, err


def test_stop_on_a_corrupt_or_missing_run_says_so_in_one_line(tmp_path, capsys):
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "run.sqlite").write_bytes(os.urandom(4096))  # not an SQLite file
    says = {
        corrupt: "run.sqlite is not a readable run database (file is not a database)",
        tmp_path / "missing": "not an actwidget run directory",
        tmp_path: "not an actwidget run directory",
    }
    for path, what in says.items():
        assert cli.main(["stop", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"python -m actwidget stop: error: {path}: "), err
        assert what in err and err.count("\n") == 1 and "Traceback" not in err, err


def test_the_verdict_names_the_fix_of_the_setup_that_goes_wrong_on_purpose():
    alerts = [SimpleNamespace(kind=k) for k in ("exploding", "dead", "dead")]
    broken = demo.verdict(alerts, 0.12, 0.6, "default")
    assert "goes wrong on purpose: 3 alerts above (exploding, dead), accuracy 0.120" in broken
    assert broken.endswith("the fix: python -m actwidget --lr 0.2 --init kaiming")
    assert demo.verdict([], 0.745, 0.2, "kaiming") == (
        "verdict: no alerts, the activations stayed healthy (lr 0.2, kaiming init, accuracy 0.745)"
    )
    other = demo.verdict(alerts[:1], None, 0.3, "default")
    assert other == "verdict: 1 alert above (exploding); each alert says what usually fixes it"


def test_the_command_prints_no_warnings_and_ends_with_the_verdict(tmp_path):
    _write_idx(tmp_path / "root" / "FashionMNIST" / "raw", 64, 16, gz=False)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env["ACTWIDGET_DATA"] = str(tmp_path / "cache")
    args = ["--bs", "16", "--root", str(tmp_path / "root"), "--out", str(tmp_path / "out")]
    r = subprocess.run(
        [sys.executable, "-m", "actwidget", *args],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "Warning" not in r.stderr and "warn" not in r.stderr.lower(), r.stderr
    last = r.stdout.rstrip().splitlines()[-1]
    assert last.startswith("verdict: ") or last.lstrip().startswith("the fix: "), r.stdout
    assert "lr 0.6, default init" in r.stdout
