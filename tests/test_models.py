"Rules, shapes, sizes and receptive fields of tiny_fastai.models (CPU, about a minute)"
import math, pytest, torch, torch.nn as nn, torch.nn.functional as F
from fastai.layers import ConvLayer, AdaptiveAvgPool, Flatten
from fastai.vision.models.xresnet import xresnet18
from tiny_fastai.models import *

PRESETS = ['tiny', 'small', 'medium', 'large', 'dense', 'dense_wide', 'sep_fused', 'sep_fused_s']
# exact parameter counts at n_out=200: a change here is a change of architecture, so update the README table too
PARAMS = dict(tiny=248_024, small=1_583_784, medium=10_574_312, large=24_897_896, dense=11_115_240, dense_wide=24_911_400,
              sep_fused=8_308_328, sep_fused_s=6_385_896)

@pytest.fixture(scope='module', autouse=True)
def one_thread():
    "On a shared 2-core machine, two OpenMP threads per process collapse under load (3-8x slower here); one is steady"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

@pytest.fixture(scope='module')
def presets():
    torch.manual_seed(0)
    return {a: get_arch(a)() for a in PRESETS}

# ---------------------------------------------------------------- models that break a rule
class Wrap(nn.Module):
    "Runs `layer` from inside a `kind` container: 'seq' (Sequential), 'list' (ModuleList) or 'dict' (ModuleDict)"
    def __init__(self, layer, kind):
        super().__init__()
        self.kind = kind
        self.c = dict(seq=lambda: nn.Sequential(layer), list=lambda: nn.ModuleList([nn.Identity(), layer]),
                      dict=lambda: nn.ModuleDict({'bad': layer}))[kind]()
    def forward(self, x):
        if self.kind=='seq': return self.c(x)
        if self.kind=='list': return self.c[1](self.c[0](x))
        return self.c['bad'](x)

PATHS = dict(seq='1.c.0', list='1.c.1', dict='1.c.bad')

def net(layer, kind, c_out=8):
    "conv 3->8, then `layer` nested in `kind`, then a legal conv head and global pooling"
    return nn.Sequential(ConvLayer(3, 8), Wrap(layer, kind), nn.Conv2d(c_out, 10, 3), AdaptiveAvgPool(), Flatten())

class Fn(nn.Module):
    "A layer whose forward makes a functional call"
    def __init__(self, f, w=None):
        super().__init__()
        self.f = f
        self.w = None if w is None else nn.Parameter(w)
    def forward(self, x): return self.f(x, self.w)

class TrainOnlyNoise(nn.Module):
    "Dropout hidden behind `self.training`: only a train-mode forward sees it"
    def forward(self, x): return F.dropout(x, 0.1) if self.training else x

class ChannelFC(nn.Module):
    "A fully connected layer over the channels at every pixel"
    def __init__(self, fc):
        super().__init__()
        self.fc = fc
    def forward(self, x): return self.fc(x.permute(0,2,3,1)).permute(0,3,1,2)

def fc_matmul(x, w): return (x.permute(0,2,3,1) @ w).permute(0,3,1,2)   # a 1x1 conv / FC written as a matmul

BAD = {  # name: (layer factory, rule, text in the reason, channels out of the layer[, path below the layer])
    'Dropout':             (lambda: nn.Dropout(0.5),                 'dropout', 'Dropout module', 8),
    'Dropout p=0':         (lambda: nn.Dropout(0.),                  'dropout', 'p=0.0', 8),
    'Dropout2d':           (lambda: nn.Dropout2d(0.2),               'dropout', 'Dropout2d module', 8),
    'AlphaDropout':        (lambda: nn.AlphaDropout(0.2),            'dropout', 'AlphaDropout module', 8),
    'FeatureAlphaDropout': (lambda: nn.FeatureAlphaDropout(0.2),     'dropout', 'FeatureAlphaDropout', 8),
    'Linear':              (lambda: ChannelFC(nn.Linear(8, 8)),      'fully connected', 'Linear module', 8, '.fc'),
    'LazyLinear':          (lambda: ChannelFC(nn.LazyLinear(8)),     'fully connected', 'Linear module', 8, '.fc'),
    'Conv 1x1 widening':   (lambda: nn.Conv2d(8, 16, 1),             'widening 1x1', 'widens 8 -> 16', 16),
    'Conv 1x1 stride 2':   (lambda: nn.Conv2d(8, 16, 1, stride=2),   'widening 1x1', 'widens 8 -> 16', 16),
    'Conv 1x1 grouped':    (lambda: nn.Conv2d(8, 32, 1, groups=8),   'widening 1x1', 'widens 8 -> 32', 32),
    'ConvLayer 1x1':       (lambda: ConvLayer(8, 16, ks=1),          'widening 1x1', 'widens 8 -> 16', 16, '.0'),
    'F.dropout':           (lambda: Fn(lambda x,w: F.dropout(x, 0.5)),             'dropout', 'functional dropout', 8),
    'F.dropout2d':         (lambda: Fn(lambda x,w: F.dropout2d(x, 0.5)),           'dropout', 'functional dropout2d', 8),
    'F.alpha_dropout':     (lambda: Fn(lambda x,w: F.alpha_dropout(x, 0.5)),       'dropout', 'functional alpha_dropout', 8),
    'torch.dropout':       (lambda: Fn(lambda x,w: torch.dropout(x, 0.5, False)),  'dropout', 'functional dropout', 8),
    'F.linear':            (lambda: Fn(lambda x,w: F.linear(x.permute(0,2,3,1), w).permute(0,3,1,2), torch.randn(8, 8)),
                            'fully connected', 'functional linear', 8),
    'F.conv2d 1x1':        (lambda: Fn(lambda x,w: F.conv2d(x, w), torch.randn(16, 8, 1, 1)), 'widening 1x1',
                            'functional conv2d with a 1x1 weight widens 8 -> 16', 16),
    'train-only F.dropout': (lambda: TrainOnlyNoise(),             'dropout', 'functional dropout', 8),
    'F.dropout, new tensor': (lambda: Fn(lambda x,w: x + F.dropout(torch.ones(1), 0.1)), 'dropout', 'functional dropout', 8),
    'matmul with a weight': (lambda: Fn(fc_matmul, torch.randn(8, 16)), 'fully connected', 'with a learned weight', 16),
    'einsum with a weight': (lambda: Fn(lambda x,w: torch.einsum('bchw,cd->bdhw', x, w), torch.randn(8, 16)),
                             'fully connected', 'einsum with a learned weight', 16),
}

@pytest.mark.parametrize('kind', ['seq', 'list', 'dict'])
@pytest.mark.parametrize('name', list(BAD))
def test_rule_broken(name, kind):
    layer,rule,why,c,*sub = BAD[name]
    with pytest.raises(RuleError) as e: check_rules(net(layer(), kind, c))
    vs,path = e.value.violations,PATHS[kind]+''.join(sub)
    assert isinstance(e.value, ValueError)
    assert [v[:2] for v in vs] == [(path, rule)], vs   # named once, at the module that broke it
    assert why in vs[0][2] and f'{path}: {rule}: ' in str(e.value)

def test_functional_named_by_module_class():
    with pytest.raises(RuleError, match=r'1\.c\.0: dropout: functional dropout called in Fn\.forward'):
        check_rules(net(Fn(lambda x,w: F.dropout(x, 0.1)), 'seq'))

def test_every_violation_listed():
    "One model breaking every rule, several times, gets every violation in one error"
    unused = Fn(lambda x,w: x)
    unused.x = nn.ModuleDict({'fc': nn.Linear(3, 3)})  # never called: still caught by module inspection
    bad = nn.Sequential(ConvLayer(3, 8), nn.Dropout(0.1), Wrap(nn.Conv2d(8, 16, 1), 'list'),
                        unused, Wrap(Fn(lambda x,w: F.dropout(x, 0.1)), 'dict'),
                        nn.Conv2d(16, 10, 3), AdaptiveAvgPool(), Flatten())
    with pytest.raises(RuleError) as e: check_rules(bad, max_params=1000)
    assert [v[:2] for v in e.value.violations] == [
        ('model', 'parameters'), ('1', 'dropout'), ('2.c.1', 'widening 1x1'), ('3.x.fc', 'fully connected'),
        ('4.c.bad', 'dropout')]
    assert e.value.violations[0][2] == '1,838 parameters > 1,000'  # 232 + 144 + 12 + 1,450
    assert str(e.value).startswith('Sequential breaks 5 rule(s):')

def test_fastai_xresnet18_caught():
    with pytest.raises(RuleError) as e: check_rules(xresnet18(n_out=200))
    vs = e.value.violations
    assert {r for _,r,_ in vs} == {'dropout', 'fully connected', 'widening 1x1'}
    assert [p for p,r,_ in vs if r=='widening 1x1'] == ['5.0.idpath.1.0', '6.0.idpath.1.0', '7.0.idpath.1.0']
    assert [p for p,r,_ in vs if r!='widening 1x1'] == ['10', '11']

def test_forward_failure_reported():
    "A model that cannot run on the dummy batch: the failure and the module violations are all listed"
    with pytest.raises(RuleError, match='dummy forward at 64px failed') as e:
        check_rules(nn.Sequential(nn.Conv2d(5, 8, 3), nn.Dropout()), c_in=3)
    assert [v[:2] for v in e.value.violations] == [('1', 'dropout'), ('model', 'forward')]

# ---------------------------------------------------------------- legal layers pass
GOOD = {
    'depthwise 3x3 widening x4': (lambda: nn.Conv2d(8, 32, 3, padding=1, groups=8), 32),
    'full 3x3 widening':         (lambda: nn.Conv2d(8, 16, 3, padding=1), 16),
    '1x1 keeping':               (lambda: nn.Conv2d(8, 8, 1), 8),
    '1x1 reducing':              (lambda: nn.Conv2d(8, 4, 1), 4),
    'F.conv2d 1x1 reducing':     (lambda: Fn(lambda x,w: F.conv2d(x, w), torch.randn(4, 8, 1, 1)), 4),
    'SepConv widening':          (lambda: SepConv(8, 24), 24),
    'SepBlock pad shortcut':     (lambda: SepBlock(8, 16, stride=2, shortcut='pad'), 16),
    'SepBlock dw shortcut':      (lambda: SepBlock(8, 16, stride=2), 16),
    'SepBlock 8->20':            (lambda: SepBlock(8, 20), 20),
    'matmul of activations':     (lambda: Fn(lambda x,w: x + x @ x.transpose(-1, -2)), 8),
}

@pytest.mark.parametrize('name', list(GOOD))
def test_legal_layers_pass(name):
    layer,c = GOOD[name]
    rep = check_rules(net(layer(), 'dict', c))
    assert rep['params'] > 0 and rep['widening_1x1'] == 0 and rep['output'] == (2, 10)

def test_presets_pass(presets):
    for a,m in presets.items():
        rep = check_rules(m)
        assert rep['params'] == PARAMS[a] and rep['output'] == (2, 200), a
        assert 'no dropout' in repr(rep) and 'no widening 1x1' in repr(rep)
        assert rep['rf'] >= 64, a   # the head conv sees the whole 64x64 image

def test_head_wider_than_features():
    "n_out above the last width: the head is a 3x3, still legal"
    m = sep_xresnet_tiny(n_out=1000)
    assert check_rules(m)['output'] == (2, 1000)
    assert m[-3][0].kernel_size == (3, 3)

def test_training_mode_restored():
    m = sep_xresnet_tiny(n_out=10).train()
    m[2].eval()  # mixed modes come back as they were
    before = [x.training for x in m.modules()]
    check_rules(m); receptive_field(m)
    assert [x.training for x in m.modules()] == before

def test_check_changes_nothing():
    "Checking (two forwards, one in train mode) leaves BatchNorm statistics and the random stream as they were"
    m = nn.Sequential(ConvLayer(3, 8), TrainOnlyNoise(), nn.Conv2d(8, 10, 3), AdaptiveAvgPool(), Flatten())
    torch.manual_seed(1)
    bufs,rng = [b.clone() for b in m.buffers()],torch.get_rng_state()
    with pytest.raises(RuleError): check_rules(m)
    receptive_field(m); count_macs(m)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(a, b) for a,b in zip(bufs, m.buffers()))

def test_params_rule():
    m = sep_xresnet_small()
    with pytest.raises(RuleError, match=r'1,583,784 parameters > 1,000,000'): check_rules(m, max_params=1_000_000)

# ---------------------------------------------------------------- presets: arch lookup, sizes, shapes, RF, backward
def test_get_arch():
    assert list(ARCHS) == PRESETS and get_arch('large') is sep_xresnet_large
    with pytest.raises(ValueError, match="unknown arch 'xl'; known archs: tiny, small, medium, large, dense, dense_wide, sep_fused, sep_fused_s"): get_arch('xl')

def test_param_counts(presets):
    n = {a: sum(p.numel() for p in m.parameters()) for a,m in presets.items()}
    assert n == PARAMS
    assert n['tiny'] < n['small'] < n['medium'] < n['large'] < 26_000_000 and n['dense'] < n['dense_wide'] < 26_000_000
    assert n['sep_fused_s'] < n['sep_fused'] < n['dense']

def test_dense_block():
    "DenseBlock: channels grow in the 3x3, the shortcut pools and pads (no 1x1 at all), the last BN starts at zero"
    b = DenseBlock(16, 32, stride=2)
    assert b(torch.randn(2, 16, 8, 8)).shape == (2, 32, 4, 4)
    assert [type(o).__name__ for o in b.idpath] == ['AvgPool2d', 'PadChannels']
    assert all(c.kernel_size == (3, 3) for c in b.modules() if isinstance(c, nn.Conv2d))
    assert float(b.convpath[1][1].weight.detach().abs().sum()) == 0
    with pytest.raises(ValueError, match='depthwise multiplier'): DenseBlock(16, 32, mult=2)
    assert xresnet_dense()[0][0].stride == (1, 1)    # the first stage sees the whole 64x64 image

def test_fused_sep_block():
    "FusedSepBlock: a dense 3x3 where the block changes width or stride, separable otherwise; the last BN starts at zero"
    b = FusedSepBlock(16, 48, stride=2, shortcut='pad')
    assert b(torch.randn(2, 16, 8, 8)).shape == (2, 48, 4, 4)
    first,second = b.convpath
    assert isinstance(first, ConvLayer) and first[0].groups == 1 and first[0].kernel_size == (3, 3) and first[0].stride == (2, 2)
    assert isinstance(second, SepConv) and float(second[1][1].weight.detach().abs().sum()) == 0
    assert [type(o).__name__ for o in b.idpath] == ['AvgPool2d', 'PadChannels']
    assert [type(o).__name__ for o in FusedSepBlock(48, 48).convpath] == ['SepConv', 'SepConv']   # same width: separable
    assert isinstance(FusedSepBlock(16, 16, stride=2).convpath[0], ConvLayer)                     # a stride alone: dense
    # SepBlock's structure is unchanged by the `entry` hook: same modules, same parameter count as before
    assert sum(p.numel() for p in SepBlock(16, 48, stride=2).parameters()) == 6_384

FUSED = dict(sep_fused=dict(layers=(2,2,5,3), widths=(64,128,384,768), macs=2_043_101_184),
             sep_fused_s=dict(layers=(2,2,4,3), widths=(64,128,256,768), macs=1_722_597_376))

@pytest.mark.parametrize('arch', list(FUSED))
def test_fused_presets(presets, arch):
    "Dense where the maps are 64 and 32 px, separable at 16 and 8 px; channels grow only in 3x3 convs; as designed"
    m,d = presets[arch],FUSED[arch]
    assert m.layers == d['layers'] and m.widths == d['widths'] and m.stem_szs == (32, 64) and m.stem_strides == (1, 1)
    assert m.block == (DenseBlock, DenseBlock, FusedSepBlock, FusedSepBlock)
    stats = model_stats(m)
    assert stats == dict(params=PARAMS[arch], macs=d['macs'], final_size=8, rf=stats['rf']) and stats['rf'] >= 64
    convs = [c for c in trace_model(m)[0].calls if c['fn']=='conv2d']   # every conv the forward calls, shortcuts too
    mods = [c for c in m.modules() if isinstance(c, nn.Conv2d)]
    assert len(mods) == len(convs)
    dw = [c for c in mods if c.groups > 1]
    assert dw and all(c.groups == c.in_channels == c.out_channels and c.kernel_size == (3, 3) for c in dw)   # plain depthwise
    assert {c['size'] for c in convs if c['groups'] > 1} == {16, 8}                       # depthwise only at 16 and 8 px
    assert all(c['kernel'] == (3, 3) and c['groups'] == 1 for c in convs if c['size'] >= 32)   # dense 3x3 on large maps
    grow = [c for c in convs if c['c_out'] > c['c_in']]   # stem 3->32->64 and the three stage entries: all dense 3x3
    assert len(grow) == 5 and all(c['kernel'] == (3, 3) and c['groups'] == 1 for c in grow)
    assert not [c for c in mods if c.kernel_size == (1, 1) and c.out_channels > c.in_channels]
    assert check_rules(m, name=arch)['params'] == PARAMS[arch]

@pytest.mark.parametrize('size', [16, 32, 40, 64, 100])
def test_shapes(presets, size):
    with torch.no_grad():
        for a,m in presets.items(): assert m.eval()(torch.randn(1, 3, size, size)).shape == (1, 200), (a, size)

def test_kwargs_and_errors():
    m = sep_xresnet_tiny(n_out=10, widths=(16,32,48,64), layers=(1,2,1,1), stem_szs=(8,16), shortcut='pad')
    assert m(torch.randn(2,3,40,40)).shape == (2,10) and len(m[3]) == 2
    check_rules(m)
    with pytest.raises(ValueError, match='widths='): SepXResNet(layers=(1,1), widths=(8,16,32))
    with pytest.raises(ValueError, match='stem_stride='): SepXResNet(stem_szs=(8,16), stem_stride=(1,2,2))
    with pytest.raises(ValueError, match="shortcut='conv'"): SepXResNet(shortcut='conv')

def test_receptive_field_table(presets):
    m = presets['tiny']
    df = receptive_field(m)
    head = df[df.fn=='conv2d'].iloc[-1]
    assert head.path == f'{len(m)-3}.0' and head.rf == check_rules(m)['rf'] == 107   # tiny's stages 3 and 4 at stride 1
    assert df.iloc[-1].fn == 'adaptive_avg_pool2d' and df.iloc[-1]['size'] == 1
    assert stage_rf(df).path.tolist() == ['0.0', '1.0', '2.0.convpath.1.0.0', '3.0.convpath.1.0.0', '4.0.convpath.1.0.0',
                                          '5.0.convpath.1.0.0', '6.0', '7']

def test_forward_backward(presets):
    for a,m in presets.items():
        m.train().zero_grad()
        loss = F.cross_entropy(m(torch.randn(8, 3, 64, 64)), torch.randint(0, 200, (8,)))
        loss.backward()
        assert math.isfinite(loss.item()), a
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters()), a

# ---------------------------------------------------------------- receptive field and MACs on hand-checkable nets
def test_receptive_field_sequential():
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.MaxPool2d(2),
                      nn.Conv2d(4, 4, 3, padding=2, dilation=2), nn.AdaptiveAvgPool2d(1))
    df = receptive_field(m, size=32)
    assert df['size'].tolist() == [32, 16, 8, 8, 1]
    assert df.jump.tolist() == [1, 2, 4, 4, 32]
    assert df.rf.tolist() == [3, 5, 7, 7+2*2*4, 23+7*4]
    assert df.path.tolist() == ['0', '1', '2', '3', '4']

def test_receptive_field_residual():
    "A residual add takes the larger receptive field of its two inputs"
    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.a,self.b = nn.Conv2d(4, 4, 3, padding=1),nn.Conv2d(4, 4, 3, padding=1)
        def forward(self, x): return self.b(self.a(x)) + x
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), Res(), nn.Conv2d(4, 4, 3, padding=1))
    assert receptive_field(m, size=16).rf.tolist() == [3, 5, 7, 9]

def test_count_macs():
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Flatten(), nn.Linear(8*8*8, 10))
    assert count_macs(m, size=8) == 8*8*8*27 + 8*8*8*9 + 512*10

def test_model_table(presets):
    assert model_stats(presets['tiny']) == dict(params=248_024, macs=20_893_696, final_size=8, rf=107)   # stages 3-4 at stride 1: 4x4 maps at 32 px
    tbl = model_table({'tiny': presets['tiny']})
    assert markdown_table(tbl).splitlines() == ['| arch | params | macs | final_size | rf |', '|---|---|---|---|---|',
                                                '| tiny | 248,024 | 20,893,696 | 8 | 107 |']

def test_receptive_fields_analytic():
    "Per layer and per residual block, from kernel sizes, strides and dilations; a block takes the larger of its two paths"
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.MaxPool2d(2),
                      nn.Conv2d(4, 4, 3, padding=2, dilation=2), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    assert receptive_fields(m) == [('0', 3, 1), ('1', 5, 2), ('2', 7, 4), ('3', 23, 4)]
    stage = nn.Sequential(SepBlock(4, 8, stride=2), SepBlock(8, 8))
    assert receptive_fields(nn.Sequential(nn.Conv2d(3, 4, 3), stage)) == [('0', 3, 1), ('1.0', 9, 2), ('1.1', 17, 2)]
    tiny = get_arch('tiny')()
    assert receptive_fields(tiny)[-1] == ('6', 107, 8) == ('6', model_stats(tiny)['rf'], 8)   # total stride 8: 4x4 class maps at 32 px
