"Every notebook in `nbs/` runs top to bottom (nbdev-test), and the library matches the notebooks (nbdev-export is a no-op)."
import subprocess, sys, os, filecmp, shutil
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]

from conftest import venv_bin as _bin   # the console scripts of this Python's environment

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

MAX_OUTPUT = 80_000   # characters of one output as stored (JSON): pictures included

def _output_text(o) -> str:
    "The text a cell output shows: a stream, the text (and HTML, JSON...) of a result or display, an error's traceback"
    if o.get('output_type') == 'stream': return ''.join(o.get('text', ''))
    if o.get('output_type') == 'error': return '\n'.join(o.get('traceback', [])) + o.get('evalue', '')
    return '\n'.join(''.join(v) if isinstance(v, list) else v for k,v in o.get('data', {}).items()
                     if isinstance(v, (str, list)) and not k.startswith('image/'))

def test_notebook_outputs_clean():
    """Every notebook in nbs/ as committed: no output redraws a line with '\\r' (a progress bar: run it with the bars off),
    none names a temporary path (/tmp/...: machine-specific, changes every run), none is over MAX_OUTPUT characters; and
    the last cell is nbdev's hidden export cell (`#| hide`, `#| eval: false`, `nbdev_export()`)."""
    import json
    bad = []
    nbs = sorted((ROOT/'nbs').glob('*.ipynb'))
    assert nbs
    for f in nbs:
        cells = json.loads(f.read_text())['cells']
        for i,c in enumerate(cells):
            for o in c.get('outputs', []):
                t = _output_text(o)
                if '\r' in t: bad.append(f"{f.name} cell {i}: an output redraws with '\\r' ({t[:80]!r}...)")
                if '/tmp/' in t: bad.append(f"{f.name} cell {i}: an output names a temporary path ({t[t.index('/tmp/'):][:60]!r})")
                n = len(json.dumps(o))
                if n > MAX_OUTPUT: bad.append(f"{f.name} cell {i}: an output of {n:,} characters (over {MAX_OUTPUT:,})")
        last = cells[-1] if cells else {}
        src = ''.join(last.get('source', ''))
        lines = [l.strip() for l in src.splitlines()]
        if not (last.get('cell_type') == 'code' and '#| hide' in lines and '#| eval: false' in lines and 'nbdev_export(' in src):
            bad.append(f"{f.name}: the last cell is not nbdev's hidden export cell (#| hide, #| eval: false, nbdev_export()): {src[:80]!r}")
    assert not bad, f"{len(bad)} problem(s) in the notebooks' outputs:\n" + '\n'.join(bad)
