"""Is the separable xresnet fast? Dense against separable presets, and the depthwise kernel itself, in one short run.

1. cost model: the H200 time per image of each preset, from three terms fitted to the measured H200 speeds in
   `bench/results/h200-*/gpu_bench.json` (dense/pointwise GMACs, BN/activation/add elements, depthwise outputs);
   no device needed.
2. presets: training-step images/s (forward + backward + SGD) of the dense and separable presets side by side at
   32/48/64 px, round-robin so that load from other processes hits every model alike; eager, and compiled with
   `--compile all`.
3. depthwise kernel: forward + backward of a depthwise 3x3 in NCHW and channels-last, a 9-tap stencil (shifted
   multiply-adds; compiled with `--compile`), a depthwise 3x3 with channel multiplier 2, and a dense 3x3 with the same
   output, at the shapes the separable stages use.

On a GPU: bf16, channels-last, cuDNN autotuned, the whole run within `--budget-s` (60 s by default; a step whose share
is spent is listed as skipped). On a CPU, `--quick` runs in seconds. Markdown and JSON go to `--out` after every row.

Usage: python bench/depthwise.py --out OUT [--quick] [--compile kernel|all] [--budget-s 60] [--archs ...] [--sizes 32 48 64]"""
import argparse, json, sys, time, warnings
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))      # bench/common.py, also when imported by a test
from common import ROOT, Report, command, load, race, train_step   # the shared harness (and the checkout on the path)
import numpy as np, torch, torch.nn as nn, torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from tiny_fastai.models import get_arch

warnings.filterwarnings('ignore')
ARCHS = ['dense', 'sep_fused', 'sep_fused_s', 'dense_wide']
SPEED = '2. training images/s, fed from tensors on the device'   # bench/gpu.py's section of speeds
# (channels, map size) of the depthwise convs of the separable stages (16 and 8 px at 64 px input), and of a stage
# that `sep_fused` keeps dense (64 channels at 64 px), to show why
SHAPES = [(384, 16), (256, 16), (768, 8), (64, 64)]

# ------------------------------------------------------------------ the 9-tap stencil
def stencil_dw(x, w, stride=1):
    "Depthwise conv of `x` (N,C,H,W) with `w` (C*m,1,k,k), 'same' padding, as k*k shifted multiply-adds (= `F.conv2d`)"
    c,k = x.shape[1],w.shape[-1]
    if w.shape[0] != c: x = x.repeat_interleave(w.shape[0]//c, 1)   # channel multiplier m: input channel i feeds m outputs
    p,(h,wd) = k//2,x.shape[-2:]
    xp = F.pad(x, (p,p,p,p))
    ho,wo = (h-1)//stride+1,(wd-1)//stride+1
    taps = [xp[:, :, i:i+stride*(ho-1)+1:stride, j:j+stride*(wo-1)+1:stride] * w[:, 0, i, j].view(1, -1, 1, 1)
            for i in range(k) for j in range(k)]
    return torch.stack(taps).sum(0) if len(taps) > 1 else taps[0]

# ------------------------------------------------------------------ 1. cost model
class CostCounter(TorchFunctionMode):
    "Count, in one forward: dense/pointwise conv multiply-adds, depthwise conv outputs and BN/activation/add/pad elements"
    ELEMENTWISE = {'batch_norm', 'relu', 'relu_', 'add', '__add__', '__iadd__', 'pad', 'avg_pool2d'}
    def __init__(self): super().__init__(); self.dense,self.dw,self.elem = 0,0,0
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out,name = func(*args, **kwargs),getattr(func, '__name__', '')
        if name == 'conv2d':
            x,w = args[0],args[1]
            g = args[6] if len(args) > 6 else kwargs.get('groups', 1)
            if g > 1 and g == x.shape[1]: self.dw += out[0].numel()
            else: self.dense += out[0].numel()*w[0].numel()
        elif name in self.ELEMENTWISE: self.elem += out[0].numel()
        return out

def cost_terms(model, size):
    "(dense GMACs, million elementwise elements, million depthwise outputs) of one `size` px image through `model`"
    cc = CostCounter()
    with torch.no_grad(), cc: model.eval()(torch.randn(1, 3, size, size))
    return cc.dense/1e9, cc.elem/1e6, cc.dw/1e6

def measured_rows(root=ROOT/'bench'/'results', min_size=48):
    "The measured eager H200 training speeds (arch, size, images/s) at `min_size` px and above (below, steps are launch-bound)"
    rows = []
    for f in sorted(root.glob('h200-*/gpu_bench.json')):
        d = json.loads(f.read_text())   # bench/gpu.py's report: its speed rows (before 2026-12-07: under steps/speed/rows)
        speed = d['steps']['speed']['rows'] if 'steps' in d else d['sections'].get(SPEED, [])
        rows += [(r['arch'], r['size'], r['ips']) for r in speed if r.get('ips') and r['size'] >= min_size and (r.get('variant') or 'autotuned').startswith('autotuned')]
    return rows

def fit_cost(rows, terms):
    "Least-squares coefficients (us per GMAC, per M elements, per M depthwise outputs) for `rows`' measured speeds"
    X,y = np.array([terms[(a, s)] for a,s,_ in rows]),np.array([1e6/ips for *_,ips in rows])
    return np.linalg.lstsq(X, y, rcond=None)[0], X, y

# ------------------------------------------------------------------ timing (the training step and `race` are common.py's)
def kernel_fns(c, h, bs, dev, compile=False):
    "Forward + backward closures for each way of computing a 3x3 conv with `c` channels on `h`x`h` maps"
    dt = torch.bfloat16 if dev.type == 'cuda' else torch.float32
    def make(f, x, w):
        x,w = x.requires_grad_(),w.requires_grad_()
        g = torch.randn_like(f(x, w))
        def run(): f(x, w).backward(g)
        return run
    x = lambda: torch.randn(bs, c, h, h, device=dev, dtype=dt)
    wd = lambda m=1: torch.randn(c*m, 1, 3, 3, device=dev, dtype=dt)
    dw = lambda x, w: F.conv2d(x, w, padding=1, groups=c)
    fns = {'depthwise, NCHW': make(dw, x(), wd()),
           'depthwise, channels-last': make(dw, x().contiguous(memory_format=torch.channels_last), wd()),
           'stencil, eager': make(stencil_dw, x(), wd())}
    if compile: fns['stencil, compiled'] = make(torch.compile(stencil_dw), x(), wd())
    fns['depthwise x2 multiplier'] = make(dw, x(), wd(2))
    fns['dense 3x3'] = make(lambda x, w: F.conv2d(x, w, padding=1), x(), torch.randn(c, c, 3, 3, device=dev, dtype=dt))
    return fns

KERNEL_OUT = {'depthwise x2 multiplier': 2}   # output channels as a multiple of c
KERNEL_MACS = {'dense 3x3': lambda c: 9*c}    # multiply-adds per output element (9 for every depthwise variant)

# ------------------------------------------------------------------ the three steps
COST, PRESETS, KERNEL = '1. cost model (H200 estimate)', '2. presets: training images/s', '3. depthwise kernel: forward + backward'

NOTE_COEF = np.array([12.9, 4.4, 25.])   # shared/notes/one-slot.md (beside the checkout): us per GMAC, per M elements, per M depthwise outputs

def cost_step(rep, archs, sizes):
    "Each preset's H200 images/s against `dense`'s: with the note's coefficients, with a depthwise output as cheap as two elements (a fast kernel), and refitted"
    torch.manual_seed(0)
    rows = measured_rows()
    models = {a: get_arch(a)() for a in dict.fromkeys([*archs, *(a for a,*_ in rows)])}
    terms = {(a, s): np.array(cost_terms(models[a], s)) for a in models for s in dict.fromkeys([*sizes, *(s for _,s,_ in rows)])}
    coef,X,y = fit_cost(rows, terms)
    err = np.abs(X@coef/y-1)
    rep.head['cost_model'] = (f'note: {NOTE_COEF[0]} us/GMAC dense, {NOTE_COEF[1]} us/M elements, {NOTE_COEF[2]} us/M depthwise outputs; '
                              f'refit: {coef[0]:.1f}, {coef[1]:.2f}, {coef[2]:.1f}, to {len(rows)} measured H200 rows at >= 48 px '
                              f'(|error| median {100*np.median(err):.0f}%, max {100*np.max(err):.0f}%)')
    fast = NOTE_COEF*[1, 1, 0]+[0, 0, 2*NOTE_COEF[1]]
    ref = 'dense' if 'dense' in archs else archs[0]
    for s in sizes:
        for a in archs:
            t,d = terms[(a, s)],terms[(ref, s)]
            rep.add(COST, dict(arch=a, size=s, dense_gmacs=round(t[0], 3), elem_m=round(t[1], 2), dw_out_m=round(t[2], 2),
                               vs_dense_note=round((d@NOTE_COEF)/(t@NOTE_COEF), 2), vs_dense_fast_dw=round((d@fast)/(t@fast), 2),
                               vs_dense_refit=round((d@coef)/(t@coef), 2), est_ips_refit=1e6/(t@coef)))
    return coef

def preset_step(rep, archs, sizes, bs, steps, warmup, dev, compile, deadline):
    "Images/s of each preset's training step at each size, side by side (eager, then compiled)"
    for variant in ['eager', 'compiled'] if compile else ['eager']:
        for s in sizes:
            if time.perf_counter() > deadline:
                rep.add(PRESETS, dict(size=s, variant=variant, note='skipped: the share of the budget was spent')); continue
            torch.manual_seed(0)
            t = time.perf_counter()
            fns = {a: train_step(get_arch(a)(), bs, s, dev, compile=variant == 'compiled') for a in archs}
            sec = race(fns, steps, warmup, dev)
            ref = sec.get('dense', sec[archs[0]])
            for a in archs:
                rep.add(PRESETS, dict(arch=a, size=s, bs=bs, variant=variant, ips=bs/sec[a], step_ms=round(1e3*sec[a], 1),
                                      vs_dense=round(ref/sec[a], 2), note=f'{time.perf_counter()-t:.1f} s for the size, warm-up included',
                                      load=load()))

def kernel_step(rep, shapes, bs, steps, warmup, dev, compile, deadline):
    "Time of each way of computing a 3x3 conv at each (channels, size), relative to cuDNN's/native NCHW depthwise"
    for c,h in shapes:
        if time.perf_counter() > deadline:
            rep.add(KERNEL, dict(shape=f'{c} x {h}x{h}', note='skipped: the share of the budget was spent')); continue
        torch.manual_seed(0)
        sec = race(kernel_fns(c, h, bs, dev, compile), steps, warmup, dev)
        base = sec['depthwise, NCHW']
        for v,t in sec.items():
            m = KERNEL_OUT.get(v, 1)
            outs = bs*c*m*h*h
            rep.add(KERNEL, dict(shape=f'{bs} x {c} x {h}x{h}', variant=v, c_out=c*m, ms=round(1e3*t, 3),
                                 g_out_per_s=round(outs/t/1e9, 3), gmac_per_s=round(outs*KERNEL_MACS.get(v, lambda c: 9)(c)/t/1e9, 1),
                                 time_vs_dw_nchw=round(t/base, 2), load=load()))

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--out', required=True)
    p.add_argument('--quick', action='store_true', help='CPU smoke run: a tiny batch, one timed step, small shapes')
    p.add_argument('--compile', choices=['kernel', 'all'], help='add torch.compile rows: the compiled stencil (kernel), '
                   'and compiled training steps (all)')
    p.add_argument('--budget-s', type=float, default=None, help='seconds for the timed steps (default 60; none with --quick: '
                   'a test counts steps, not seconds)')
    p.add_argument('--archs', nargs='+', default=ARCHS)
    p.add_argument('--sizes', nargs='+', type=int, default=[32, 48, 64])
    p.add_argument('--bs', type=int, help='preset batch size (default 256 on a GPU, 16 on a CPU, 2 with --quick)')
    p.add_argument('--steps', type=int, help='timed steps (default 10 on a GPU, 5 on a CPU, 1 with --quick)')
    p.add_argument('--threads', type=int, default=1, help='CPU threads (1: steady on a shared machine)')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    a = p.parse_args(argv)
    dev,t0 = torch.device(a.device),time.perf_counter()
    gpu = dev.type == 'cuda'
    if gpu: torch.backends.cudnn.benchmark = True
    else: torch.set_num_threads(a.threads)
    bs = a.bs or (256 if gpu else 2 if a.quick else 16)
    steps = a.steps or (10 if gpu else 1 if a.quick else 5)
    kbs,shapes = (256, SHAPES) if gpu else (2, [(c//4, h) for c,h in SHAPES]) if a.quick else (16, SHAPES)
    budget = a.budget_s if a.budget_s is not None else float('inf') if a.quick else 60.
    rep = Report(a.out, 'depthwise', title='Depthwise and separable presets: how fast', device=str(dev), command=command(__file__, argv))
    cost_step(rep, a.archs, a.sizes)
    left = budget - (time.perf_counter() - t0)
    preset_step(rep, a.archs, a.sizes, bs, steps, 1, dev, a.compile == 'all', t0 + budget - 0.4*left)
    kernel_step(rep, shapes, kbs, max(steps, 3), 1, dev, a.compile is not None, t0 + budget)
    rep.done(elapsed_s=round(time.perf_counter() - t0, 1))
    print((Path(a.out)/'depthwise.md').read_text())
    return rep

if __name__ == '__main__': main()
