"Every notebook in `nbs/` runs top to bottom (nbdev-test), and the library matches the notebooks (nbdev-export is a no-op)."
import subprocess, sys, os, filecmp, shutil
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]

def _bin(name): return str(Path(sys.executable).parent/name)

def test_notebooks_run():
    "`nbdev-test` executes every notebook; cells flagged `#| slow` are skipped."
    r = subprocess.run([_bin('nbdev-test'), '--n-workers', '2', '--timing'], cwd=ROOT, capture_output=True, text=True)
    print(r.stdout[-5000:], r.stderr[-5000:])
    assert r.returncode == 0, f"nbdev-test failed:\n{r.stdout[-5000:]}\n{r.stderr[-5000:]}"

def test_library_matches_notebooks(tmp_path):
    "Exporting the notebooks again into a copy of the tree changes no module: `tiny_fastai/*.py` are not edited by hand."
    dst = tmp_path/'repo'   # only what nbdev-export reads and writes (never an in-repo .venv or data)
    dst.mkdir(); shutil.copy(ROOT/'pyproject.toml', dst)
    for d in ('nbs', 'tiny_fastai'):
        shutil.copytree(ROOT/d, dst/d, ignore=shutil.ignore_patterns('__pycache__', 'sample', '_proc', '_docs', 'runs', 'models', '.cache'))
    r = subprocess.run([_bin('nbdev-export')], cwd=dst, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for f in sorted((ROOT/'tiny_fastai').glob('*.py')):
        if f.name == '__init__.py': continue
        g = dst/'tiny_fastai'/f.name
        assert g.exists() and f.read_text() == g.read_text(), f"{f.name} differs from what nbdev-export writes from nbs/"

def test_readme_matches_index():
    "README.md is `nbs/index.ipynb` rendered (`python tools/make_readme.py`), not edited by hand."
    import json
    nb = json.loads((ROOT/'nbs'/'index.ipynb').read_text())
    parts = [''.join(c['source']).strip() for c in nb['cells'] if c['cell_type'] == 'markdown']
    want = '\n\n'.join(p for p in parts if p) + '\n'
    assert (ROOT/'README.md').read_text() == want, "README.md is out of date: run `python tools/make_readme.py`"
