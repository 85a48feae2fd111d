"""docs/benchmarks/ stays indexed: every file there is named in its README, every file the
benchmark docs link to exists, and the plots read only the current files (not history/)."""
import pathlib
import re

from bench import benchmark_plots as BP

ROOT = pathlib.Path(__file__).resolve().parents[2]
BENCH_DOCS = ROOT / "docs" / "benchmarks"


def test_every_benchmark_file_is_named_in_the_index():
    index = (BENCH_DOCS / "README.md").read_text()
    files = [p for p in BENCH_DOCS.rglob("*") if p.is_file() and p.name != "README.md"]
    assert files, "docs/benchmarks/ is empty"
    unnamed = [str(p.relative_to(BENCH_DOCS)) for p in files if f"`{p.name}`" not in index]
    assert not unnamed, f"docs/benchmarks/README.md does not name {unnamed}"


def test_links_of_the_benchmark_docs_resolve():
    for doc in (ROOT / "docs" / "benchmarks.md", BENCH_DOCS / "README.md",
                BENCH_DOCS / "history" / "notebook.md"):
        for target in re.findall(r"\]\(([^)#\s]+)\)", doc.read_text()):
            assert (doc.parent / target).exists(), f"{doc.relative_to(ROOT)} links to {target}"


def test_the_plots_read_current_files_only():
    for name in (BP.E2E, *BP.LEARNER_FILES):
        assert (BENCH_DOCS / name).is_file(), f"{name} is not a current file of docs/benchmarks/"
