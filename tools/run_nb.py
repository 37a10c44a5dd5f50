"""Run notebooks top to bottom and store their outputs in place (what a reader sees without running anything).

`python tools/run_nb.py nbs/02_models.ipynb [...]` executes each notebook with execnb (nbdev's own runner, so no
Jupyter server is needed), in the notebook's folder, and writes it back with the new outputs (as a terminal would show them
at the end: no progress-bar redraws, temporary folders written `tmp`; `--clean` tidies stored outputs without running); cells marked
`#| eval: false` or `#| slow` (downloads, hours-long runs: what `nbdev-test` skips too) are kept as they are. Run `nbdev-clean` afterwards, as before any commit."""
import base64, io, os, re, sys, time
from pathlib import Path
from PIL import Image
from fastcore.nbio import read_nb, write_nb   # execnb 0.3 moved them to fastcore
from execnb.shell import CaptureShell

def small_pictures(cell, max_width:int=640, quality:int=70):
    "Re-encode the cell's PNG pictures as JPEG, at most `max_width` px wide: outputs stay a few tens of KB"
    for o in cell.get('outputs', []):
        data = o.get('data', {})
        if 'image/png' not in data: continue
        im = Image.open(io.BytesIO(base64.b64decode(data['image/png']))).convert('RGB')
        if im.width > max_width: im = im.resize((max_width, round(im.height*max_width/im.width)), Image.LANCZOS)
        buf = io.BytesIO(); im.save(buf, 'JPEG', quality=quality, optimize=True)
        del data['image/png']; data['image/jpeg'] = base64.b64encode(buf.getvalue()).decode()

TMP = re.compile(r'(/private)?/(tmp|var/folders)/[^\s\'"]*?tmp[a-z0-9_]{6,}')   # a folder of tempfile.mkdtemp()

def final_text(text:str) -> str:
    "What a terminal shows at the end of `text`: each line as its last carriage return left it; temporary folders as `tmp`"
    lines = [l.rsplit('\r', 1)[-1] if '\r' in l.rstrip('\r') else l.replace('\r', '') for l in text.split('\n')]
    return TMP.sub('tmp', '\n'.join(lines))

def clean_outputs(cell):
    "Store what a reader should see: no progress-bar redraws, no temporary paths of the machine that ran it"
    for o in cell.get('outputs', []):
        if 'text' in o: o['text'] = final_text(''.join(o['text']) if isinstance(o['text'], list) else o['text'])
        for k in ('text/plain', 'text/markdown', 'text/html'):
            v = o.get('data', {}).get(k)
            if v is not None: o['data'][k] = final_text(''.join(v) if isinstance(v, list) else v)

def run(path):
    path = Path(path).resolve()
    nb,cwd,t = read_nb(path),os.getcwd(),time.time()
    os.chdir(path.parent)
    try:
        sh = CaptureShell()
        sh.run('import tiny_fastai.core')   # as the package's modules do: it silences fastai's import-time warnings
        for c in nb.cells:
            if c.cell_type != 'code' or '#| eval: false' in c.source or '#| slow' in c.source: continue
            sh.cell(c)
            if sh.exc: raise RuntimeError(f"{path.name}: a cell failed:\n{c.source[:500]}\n{sh.exc}")
            small_pictures(c); clean_outputs(c)
    finally: os.chdir(cwd)
    write_nb(nb, path)
    print(f"{path.name}: ran in {time.time()-t:.0f} s, outputs stored")

def clean(path):
    "Only `clean_outputs` the outputs stored in `path` (no cell runs)"
    nb = read_nb(path)
    for c in nb.cells: clean_outputs(c)
    write_nb(nb, path)

if __name__ == '__main__':
    args = sys.argv[1:]
    if args[:1] == ['--clean']:   # `python tools/run_nb.py --clean nbs/X.ipynb`: tidy stored outputs without running
        for p in args[1:]: clean(p)
    else:
        for p in args: run(p)
