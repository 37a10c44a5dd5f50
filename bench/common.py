"""The harness every benchmark script here shares: the machine it ran on and how busy it was, the report it writes
(`Report`: markdown and JSON, rewritten after every row, so a run cut short keeps what it measured), the training step
it times (`train_step`, timed round-robin by `race`), the subset of Tiny ImageNet it trains on (`subset`), and the
stock-fastai baseline (`stock_fastai`).

The scripts import it as `from common import ...` (Python puts the script's folder, `bench/`, on the path)."""
import json, os, platform, statistics, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path: sys.path.insert(0, str(ROOT))   # run from a checkout without installing

def cpu_model() -> str:
    "The CPU's model name"
    try: return next(l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name'))
    except (OSError, StopIteration): return platform.processor() or 'unknown CPU'

def load(sep:str='/') -> str:
    "The 1, 5 and 15-minute load averages"
    return sep.join(f'{v:.1f}' for v in os.getloadavg()) if hasattr(os, 'getloadavg') else '?'

def machine() -> str:
    "One line naming the machine: CPU, cores, Python, torch"
    import torch
    return f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}"

def command(script, argv=None) -> str:
    "The command line that ran `script` (its `__file__`), as a reader would type it from the checkout"
    return 'python ' + ' '.join([os.path.relpath(script, ROOT)] + list(argv if argv is not None else sys.argv[1:]))

# ------------------------------------------------------------------ the report
def _fmt(v): return f'{v:,.0f}' if isinstance(v, float) and abs(v) >= 100 else f'{v:.3g}' if isinstance(v, float) else str(v)

class Report:
    """Sections of rows, written to OUT/NAME.md (a markdown table per section under a header of `head`'s fields) and
    OUT/NAME.json (`head`'s fields and `sections`), atomically, after every change"""
    def __init__(self, out, name, **head):
        self.out,self.name,self.sections = Path(out),name,{}
        self.head = dict(head, machine=machine(), date=time.strftime('%Y-%m-%d %H:%M'), load_at_start=load(), status='running')
        self.out.mkdir(parents=True, exist_ok=True)
        self.write()
    def add(self, section, row): self.sections.setdefault(section, []).append(row); self.write()
    def done(self, status='done', **kw): self.head.update(kw, status=status, load_at_end=load()); self.write()
    def markdown(self) -> str:
        md = [f'# {self.head.get("title", self.name)}', '', *[f'{k}: {v}  ' for k,v in self.head.items() if k != 'title']]
        for s,rows in self.sections.items():
            cols = list(dict.fromkeys(k for r in rows for k in r))
            md += ['', f'## {s}', '', '| '+' | '.join(cols)+' |', '|'+'---|'*len(cols)]
            md += ['| '+' | '.join(_fmt(r.get(c, '')) for c in cols)+' |' for r in rows]
        return '\n'.join(md)+'\n'
    def write(self):
        for f,text in ((f'{self.name}.md', self.markdown()),
                       (f'{self.name}.json', json.dumps(dict(**self.head, sections=self.sections), indent=1, default=str) + '\n')):
            tmp = self.out/f'.{f}.tmp'; tmp.write_text(text); os.replace(tmp, self.out/f)

# ------------------------------------------------------------------ the training step
def _sync(dev):
    import torch
    if torch.device(dev).type == 'cuda': torch.cuda.synchronize(dev)

def train_step(model, bs, size, dev, opt='sgd', compile=False, n_out=200):
    """A training step of `model` (forward, label-smoothed loss, backward, `opt` as `tiny_learner` makes it) on one fixed
    random batch already on `dev`: bf16 autocast and channels-last on a GPU, as the recipes train"""
    import torch, torch.nn.functional as F
    from tiny_fastai.learner import get_opt, wd_splitter
    dev = torch.device(dev); gpu = dev.type == 'cuda'
    model = model.to(dev).train()
    if gpu: model = model.to(memory_format=torch.channels_last)
    o = get_opt(opt, dev)(wd_splitter(model), lr=1e-3)
    fwd = torch.compile(model) if compile else model
    x = torch.randn(bs, 3, size, size, device=dev)
    if gpu: x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, n_out, (bs,), device=dev)
    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=gpu):
            loss = F.cross_entropy(fwd(x), y, label_smoothing=0.1)
        loss.backward(); o.step(); o.zero_grad()
    return step

def race_times(fns, steps, warmup, dev='cpu') -> dict:
    "Seconds of each call of each function in `fns`, timed round-robin (so that outside load hits each alike), after `warmup` calls each"
    for f in fns.values():
        for _ in range(warmup): f()
    times = {n: [] for n in fns}
    for _ in range(steps):
        for n,f in fns.items():
            _sync(dev); t = time.perf_counter(); f(); _sync(dev)
            times[n].append(time.perf_counter() - t)
    return times

def race(fns, steps, warmup, dev='cpu') -> dict:
    "Median seconds per call of each function in `fns`, timed round-robin (`race_times`)"
    return {n: statistics.median(t) for n,t in race_times(fns, steps, warmup, dev).items()}

# ------------------------------------------------------------------ the data of the benchmarks: a subset of Tiny ImageNet
QUICK_SUBSET = dict(classes=5, n_train=20, n_val=10)   # --quick: 100 train / 50 val images of the bundled sample, seconds per epoch on a CPU

def subset(data=None, dest=None, classes:int=20, n_train:int=500, n_val:int=50, tmp=None, seed:int=0) -> Path:
    """`classes` classes of Tiny ImageNet `data` (an archive or a folder; None: the bundled 10-class sample), `n_train` train
    and `n_val` val images each, made by `make_subset(seed=0)` in `dest` (default: `tmp/subset{classes}`), or `dest` as it is
    if it exists already. An archive is extracted into `tmp` (default: a new temp folder)."""
    from tiny_fastai.archive import get_tiny_imagenet
    from tiny_fastai.data import make_subset, sample_path
    tmp = Path(tmp) if tmp is not None else Path(tempfile.mkdtemp(prefix='tiny-bench-'))
    dest = Path(dest) if dest is not None else tmp/f'subset{classes}'
    if dest.exists(): return dest
    src = sample_path() if data is None else Path(data)
    full = get_tiny_imagenet(src) if src.is_dir() else get_tiny_imagenet(src, dest=tmp/'full')
    return make_subset(full, dest, n_classes=classes, n_train=n_train, n_val=n_val, seed=seed)

# ------------------------------------------------------------------ the stock-fastai baseline
def stock_dls(path, size:int, bs:int=64, num_workers=None, min_scale:float=1.):
    """Stock fastai's loaders on the images and labels of Tiny ImageNet at `path` (train: train/, valid: the val set): a
    `DataBlock` with `Resize(64)`, `aug_transforms(size=size, min_scale=min_scale)` and ImageNet's statistics"""
    from fastai.vision.all import DataBlock, ImageBlock, CategoryBlock, Resize, aug_transforms, Normalize, imagenet_stats
    from tiny_fastai.data import scan
    info = scan(path)
    items = [f for f,_ in info.train + info.valid]
    lbl = {f: info.names[w] for f,w in info.train + info.valid}
    n = len(info.train)
    db = DataBlock(blocks=(ImageBlock, CategoryBlock), get_y=lambda f: lbl[f],
                   splitter=lambda o: (list(range(n)), list(range(n, len(items)))),
                   item_tfms=Resize(64), batch_tfms=[*aug_transforms(size=size, min_scale=min_scale), Normalize.from_stats(*imagenet_stats)])
    return db.dataloaders(items, bs=bs, num_workers=num_workers)

def stock_learner(dls):
    "fastai's `xresnet18` with its own head, plain cross-entropy, top-1 and top-5 (top-k of all classes below 5)"
    from fastai.vision.all import Learner, xresnet18, accuracy, top_k_accuracy, CrossEntropyLossFlat
    from functools import partial
    top5 = partial(top_k_accuracy, k=min(5, dls.c)); top5.__name__ = 'top5'
    return Learner(dls, xresnet18(n_out=dls.c), loss_func=CrossEntropyLossFlat(), metrics=[accuracy, top5])

def stock_fastai(path, sizes, epochs, lr:float=3e-3, bs:int=64, seed:int=42, num_workers=None, min_scale:float=1., log:bool=True) -> dict:
    """The stock-fastai baseline, as a fastai user would start: `stock_dls` at each of `sizes` (rebuilt per stage),
    `xresnet18`, `fit_one_cycle(epochs[i], lr)` per stage. Returns top-1, top-5, parameters and seconds of training."""
    import time
    from fastai.vision.all import set_seed
    set_seed(seed, reproducible=True)
    learn,train_s = None,0.
    for size,n in zip(sizes, epochs):
        dls = stock_dls(path, size, bs, num_workers, min_scale)
        if learn is None: learn = stock_learner(dls)
        else: learn.dls = dls
        t = time.time()
        with learn.no_bar():
            if log: learn.fit_one_cycle(n, lr)
            else:
                with learn.no_logging(): learn.fit_one_cycle(n, lr)
        train_s += time.time() - t
    _,top1,top5 = learn.validate()
    return dict(top1=float(top1), top5=float(top5), params=sum(p.numel() for p in learn.model.parameters()), train_s=train_s)
