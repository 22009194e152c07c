"""The demo's path end to end, on a suite small enough for a test: runs, table and figures a person can open."""

import numpy as np
import pytest
from PIL import Image

TINY_DEMO = """
name: tiny_demo
backbones: [vit_micro]
regimes: [no_dropout, early_dropout]
seeds: [0]
pretrain:
  recipe: cpu
  data: mnist
  overrides: {epochs: 2, train_subset: 512, val_subset: 128, batch_size: 64, per_device_batch: 64, warmup_epochs: 0}
transfers:
  - {kind: cls, dataset: sklearn_digits, protocol: linear, overrides: {train_subset: 200, test_subset: 100}}
output:
  runs: runs/tiny_demo
  results: results/tiny_demo
"""


@pytest.mark.slow
def test_the_demo_writes_its_table_and_figures(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    suite = tmp_path / "tiny_demo.yaml"
    suite.write_text(TINY_DEMO)
    code, out, err = cli("demo", "--suite", suite)
    assert code == 0, err
    results = tmp_path / "results" / "tiny_demo"
    table = (results / "table.md").read_text()
    assert "early_dropout" in table and "no_dropout" in table and "sklearn_digits linear top-1" in table
    assert "demo wall time" in out
    assert "one seed cannot resolve a regime" in out and "regimes_embedded.yaml" in table, "n = 1 says so"
    deltas = (results / "figures" / "deltas.csv").read_text().splitlines()
    assert deltas[0].startswith("backbone,") and len(deltas) == 1 + 3, "early dropout's top-1, train loss and probe Δ"
    assert all(",False," in line for line in deltas[1:]), "a single-seed Δ is never significant"
    for name in ("deltas.png", "pretrain_curves.png", "schedules.png"):
        with Image.open(results / "figures" / name) as image:
            assert image.format == "PNG" and image.width >= 600 and image.height >= 300, name
            assert len(np.unique(np.asarray(image.convert("L")))) > 10, f"{name} is blank"
    code, out, _ = cli("demo", "--suite", suite)  # a second demo runs nothing again
    assert code == 0 and "finished earlier" in out and "running" not in out
