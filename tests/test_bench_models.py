"""bench/depthwise.py on the CPU: the dense-vs-separable and depthwise-kernel benchmark runs end to end in seconds
(`--quick`), its 9-tap stencil is exactly a depthwise `F.conv2d`, and its cost model reproduces the measured H200 speeds."""
import importlib.util, json, pytest, torch, torch.nn.functional as F
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

@pytest.fixture(scope='module')
def dw():
    spec = importlib.util.spec_from_file_location('depthwise_bench', ROOT/'bench'/'depthwise.py')
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)   # in this process: no second import of fastai
    return m

@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)   # main() sets one thread on a CPU

def test_depthwise_bench_quick_on_cpu(dw, tmp_path):
    out = tmp_path/'out'
    rep = dw.main(['--out', str(out), '--quick'])
    d = json.loads((out/'depthwise.json').read_text())
    assert d['status'] == 'done' and d['device'] == 'cpu' and 'load_at_start' in d and d['sections'] == rep.sections
    cost,pre,ker = (d['sections'][k] for k in (dw.COST, dw.PRESETS, dw.KERNEL))
    assert {(r['arch'], r['size']) for r in pre} == {(a, s) for a in dw.ARCHS for s in (32, 48, 64)}
    assert all(r['ips'] > 0 and r['variant'] == 'eager' for r in pre)
    assert all(r['vs_dense'] == 1 for r in pre if r['arch'] == 'dense')
    variants = {'depthwise, NCHW', 'depthwise, channels-last', 'stencil, eager', 'depthwise x2 multiplier', 'dense 3x3'}
    assert {r['variant'] for r in ker} == variants and len(ker) == len(variants)*len(dw.SHAPES)
    assert all(r['ms'] > 0 for r in ker) and all(r['time_vs_dw_nchw'] == 1 for r in ker if r['variant'] == 'depthwise, NCHW')
    assert {(r['arch'], r['size']) for r in cost} == {(a, s) for a in dw.ARCHS for s in (32, 48, 64)}
    md = (out/'depthwise.md').read_text()
    assert all(f'## {k}' in md for k in (dw.COST, dw.PRESETS, dw.KERNEL)) and 'sep_fused_s' in md

def test_budget_skips(dw, tmp_path):
    "A spent budget leaves the timed steps listed as skipped, and the report is still written"
    dw.main(['--out', str(tmp_path), '--quick', '--budget-s', '0', '--archs', 'dense', 'sep_fused_s'])
    d = json.loads((tmp_path/'depthwise.json').read_text())
    rows = d['sections'][dw.PRESETS] + d['sections'][dw.KERNEL]
    assert d['status'] == 'done' and rows and all(r['note'].startswith('skipped') for r in rows)

@pytest.mark.parametrize('c,mult,stride,ks', [(5, 1, 1, 3), (4, 2, 1, 3), (6, 1, 2, 3), (3, 3, 2, 3), (4, 1, 1, 5)])
def test_stencil_is_depthwise_conv(dw, c, mult, stride, ks):
    "Forward and both gradients equal F.conv2d's (float64), with a channel multiplier, a stride, odd sizes"
    torch.manual_seed(0)
    x = torch.randn(2, c, 9, 7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(c*mult, 1, ks, ks, dtype=torch.float64, requires_grad=True)
    ref = F.conv2d(x, w, stride=stride, padding=ks//2, groups=c)
    out = dw.stencil_dw(x, w, stride)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(ref)
    gx,gw = torch.autograd.grad(ref, (x, w), g)
    torch.testing.assert_close(torch.autograd.grad(out, (x, w), g), (gx, gw))

def test_cost_counts(dw):
    "Dense MACs agree with count_macs; a depthwise-free net has no depthwise outputs; the separable ones do, on 16/8 px maps"
    from tiny_fastai.models import get_arch, count_macs
    torch.manual_seed(0)
    dense,sep = get_arch('dense')(),get_arch('sep_fused')()
    g,e,d = dw.cost_terms(dense, 64)
    assert d == 0 and round(g*1e9) == count_macs(dense) and e > 0
    g,e,d = dw.cost_terms(sep, 64)
    assert d*1e6 == (2*5-1)*384*16*16 + (2*3-1)*768*8*8   # two depthwise 3x3 per block, one in each fused entry
    assert round(g*1e9 + d*1e6*9) == count_macs(sep)

def test_cost_model_fits_measured(dw):
    "The refit reproduces the measured H200 rows; the separable presets come out between `large` and `dense`"
    rows = dw.measured_rows()
    assert len(rows) >= 8 and all(s >= 48 for _,s,_ in rows)
    from tiny_fastai.models import get_arch
    models = {a: get_arch(a)() for a in {'dense', 'large', 'sep_fused', *(a for a,*_ in rows)}}
    terms = {(a, s): dw.cost_terms(models[a], s) for a in models for s in {64, *(s for _,s,_ in rows)}}
    coef,X,y = dw.fit_cost(rows, terms)
    assert (coef > 0).all() and abs(X@coef/y - 1).max() < 0.35
    t = lambda a: sum(c*v for c,v in zip(coef, terms[(a, 64)]))
    assert t('dense') < t('sep_fused') < t('large')
