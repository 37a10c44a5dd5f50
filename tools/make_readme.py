"""Write README.md from nbs/index.ipynb (its markdown cells, in order).

`nbdev-readme` renders the README with Quarto, which this project's machines do not have (no network beyond PyPI),
so this script does the same for an index notebook that holds only markdown: `python tools/make_readme.py`.
Where Quarto is installed, `nbdev-readme` gives the same text."""
import json
from pathlib import Path

root = Path(__file__).resolve().parents[1]
nb = json.loads((root/'nbs'/'index.ipynb').read_text())
parts = [''.join(c['source']).strip() for c in nb['cells'] if c['cell_type'] == 'markdown']
(root/'README.md').write_text('\n\n'.join(p for p in parts if p) + '\n')
print(f"wrote {root/'README.md'} from nbs/index.ipynb ({len(parts)} markdown cells)")
