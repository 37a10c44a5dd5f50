"""Run notebooks top to bottom and store their outputs in place (what a reader sees without running anything).

`python tools/run_nb.py nbs/02_models.ipynb [...]` executes each notebook with execnb (nbdev's own runner, so no
Jupyter server is needed), in the notebook's folder, and writes it back with the new outputs; cells marked
`#| eval: false` are kept as they are. Run `nbdev-clean` afterwards, as before any commit."""
import os, sys, time
from pathlib import Path
from fastcore.nbio import read_nb, write_nb   # execnb 0.3 moved them to fastcore
from execnb.shell import CaptureShell

def run(path):
    path = Path(path).resolve()
    nb,cwd,t = read_nb(path),os.getcwd(),time.time()
    os.chdir(path.parent)
    try:
        sh = CaptureShell()
        for c in nb.cells:
            if c.cell_type != 'code' or '#| eval: false' in c.source: continue
            sh.cell(c)
            if sh.exc: raise RuntimeError(f"{path.name}: a cell failed:\n{c.source[:500]}\n{sh.exc}")
    finally: os.chdir(cwd)
    write_nb(nb, path)
    print(f"{path.name}: ran in {time.time()-t:.0f} s, outputs stored")

if __name__ == '__main__':
    for p in sys.argv[1:]: run(p)
