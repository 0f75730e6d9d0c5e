"""The shipped CI suite on real Fashion-MNIST, end to end through the CLI: run, aggregate, leaderboard, plots,
and the published site checked in a real headless browser."""
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from bench_harness.results.store import load_results
from tests.conftest import bench

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SUITE = Path(__file__).parent.parent / "suites" / "pai_fashion_mnist_small.yaml"
# slow: the module's fixture trains every baseline on real Fashion-MNIST (about 2 minutes); scripts/test.sh --all
# (CI) runs it, and test_cli_integration's real-data run stays in the default tier
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not FASHION.exists(), reason="Debian's dataset-fashion-mnist is not installed "
                                                              "(scripts/test.sh installs it as root)")]


@pytest.fixture(scope="module")
def real_results(tmp_path_factory):
    root = tmp_path_factory.mktemp("real") / "results"
    bench("run", SUITE, "--no-progress", "--results-root", root, timeout=1200)
    return root


def test_every_baseline_runs_on_real_data(real_results):
    df = load_results(real_results, ["pai_fashion_mnist_small"])
    assert len(df) == 66 and (df.status == "ok").all(), df[df.status != "ok"].error.tolist()
    assert set(df.pruner) == {"dense", "random", "magnitude", "snip", "grasp", "synflow", "imp", "px",
                              "px_cvpr2024"}
    pruned = df[df.pruner != "dense"]
    assert ((pruned.achieved_sparsity - pruned.target_sparsity).abs() < 2e-3).all()
    imp = df[(df.pruner == "imp") & df.ablation.isna() & (df.target_sparsity == 0.9)].iloc[0]
    assert json.loads(imp.pruner_info)["levels"] == 4  # 0.5, 0.25, 0.125, 0.1
    assert (df[df.pruner == "dense"].top1 > 0.6).all()
    assert list(json.loads(imp.layer_density)) == ["features.0.weight", "features.3.weight", "classifier.0.weight",
                                                    "classifier.2.weight", "classifier.4.weight"]


def test_aggregate_leaderboard_and_plots(real_results, tmp_path):
    out = bench("aggregate", SUITE, "--results-root", real_results).stdout
    assert "66 runs -> 33 leaderboard rows" in out
    board = pd.read_parquet(real_results / "pai_fashion_mnist_small" / "leaderboard.parquet")
    assert len(board) == 33 and (board.seeds == 2).all()
    px = board[(board.method == "px") & (board.sparsity_bin == 0.9)].iloc[0]
    assert px.vs_random_pairs == 2 and px.vs_magnitude_pairs == 2 and px.vs_dense_pairs == 2
    md = bench("leaderboard", SUITE, "--results-root", real_results, "--format", "md").stdout
    header = [c.strip() for c in md.splitlines()[0].strip("|").split("|")]
    assert header[:7] == ["model", "dataset", "sparsity", "method", "rank", "seeds", "top-1 (%)"]
    assert len(md.strip().splitlines()) == 2 + 33
    for fmt in ("csv", "latex"):
        assert bench("leaderboard", SUITE, "--results-root", real_results, "--format", fmt).stdout
    bench("leaderboard", SUITE, "--results-root", real_results, "--format", "parquet", "--out", tmp_path / "lb.parquet")
    assert len(pd.read_parquet(tmp_path / "lb.parquet")) == 33
    bench("plot", SUITE, "--results-root", real_results, "--out", tmp_path / "plots")
    files = sorted(p.name for p in (tmp_path / "plots" / "pai_fashion_mnist_small").iterdir())
    for stem in ("accuracy_vs_density", "accuracy_vs_cost", "accuracy_vs_bits", "layer_density"):
        for ext in (".png", ".svg", ".pdf"):
            assert any(f.startswith(stem) and f.endswith(ext) for f in files), files
    assert all((tmp_path / "plots" / "pai_fashion_mnist_small" / f).stat().st_size > 5000 for f in files)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (scripts/test.sh installs it)")
def test_published_site_in_a_headless_browser(real_results, tmp_path):
    from playwright.sync_api import sync_playwright

    site = tmp_path / "site"
    bench("publish", SUITE, "--results-root", real_results, "--out", site)
    page_path = site / "pai_fashion_mnist_small" / "index.html"
    assert (site / "index.html").exists() and page_path.exists()
    assert (site / "pai_fashion_mnist_small" / "leaderboard.parquet").exists()
    html_text = page_path.read_text()
    assert "http://" not in html_text and "https://" not in html_text  # nothing fetched at view time
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(page_path.as_uri())
        page.wait_for_load_state("load")
        assert not errors, errors
        rows = page.locator("#leaderboard tbody tr")
        assert rows.count() == 33
        # sort by the top-1 column, descending: the first row then has the highest mean
        header = page.locator("#leaderboard th", has_text="top-1")
        header.click()
        header.click()
        values = [float(t.split(" ± ")[0]) for t in
                  page.locator("#leaderboard tbody tr td:nth-child(7)").all_inner_texts()]
        assert values == sorted(values, reverse=True)
        page.locator("#leaderboard th", has_text="method").click()
        methods = page.locator("#leaderboard tbody tr td:nth-child(4)").all_inner_texts()
        assert methods == sorted(methods, key=str.lower)
        images = page.locator("img")
        assert images.count() >= 4
        for i in range(images.count()):
            assert page.evaluate("(img) => img.complete && img.naturalWidth > 0", images.nth(i).element_handle())
            assert images.nth(i).bounding_box()["width"] > 800  # full-size plots, not thumbnails
        # the suite's context: description, recipe, commit, hardware
        meta = page.locator("dl.meta").inner_text()
        assert "real-data version of the PaI comparison" in meta and "recipe" in meta and "hardware" in meta
        assert '"error": "nan"' not in html_text and "\"error\": \"None\"" not in html_text
        # nothing overflows the page at 1280 px: wide tables scroll inside their own box
        assert page.evaluate("document.documentElement.scrollWidth") <= 1280
        # the runs filter
        page.fill("#run-filter", "synflow")
        visible = page.locator("#runs tbody tr:visible")
        assert 0 < visible.count() < 66 and all("synflow" in t for t in visible.all_inner_texts())
        page.fill("#run-filter", "")
        page.select_option("#run-status", "failed")
        assert page.locator("#runs tbody tr:visible").count() == 0
        page.select_option("#run-status", "")
        page.screenshot(path=str(tmp_path / "leaderboard.png"), full_page=True)
        assert (tmp_path / "leaderboard.png").stat().st_size > 10000
        page.goto((site / "index.html").as_uri())
        page.locator("a", has_text="pai_fashion_mnist_small").click()
        assert page.title().startswith("pai_fashion_mnist_small")
        assert not errors, errors
        browser.close()
