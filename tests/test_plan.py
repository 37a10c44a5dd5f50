"""tiny_fastai.plan: `Stage` and `Recipe` check themselves when made, the presets are `Recipe`s, `resolve_plan` applies
overrides and refuses unknown ones, `check_budget` reads durations, and `budget_stages` fits a plan to seconds."""
import dataclasses, pytest
from tiny_fastai.plan import (Stage, Recipe, RECIPES, PlanError, get_recipe, resolve_plan, check_plan, check_budget,
                              MAX_EPOCHS)
from tiny_fastai.fit import budget_stages


def test_stage_unpacks_like_a_tuple_and_checks_itself():
    size, epochs, lr = Stage(32, 4, 1e-3)
    assert (size, epochs, lr) == (32, 4, 1e-3) and Stage(64, 2).lr is None
    with pytest.raises(PlanError, match='size must be an integer >= 8'): Stage(4, 1)
    with pytest.raises(PlanError, match='epochs must be a positive integer'): Stage(32, 0)
    with pytest.raises(PlanError, match='learning rate must be a positive number'): Stage(32, 1, -1.)
    assert check_plan([(16, 2), Stage(32, 1, 1e-3)]) == [Stage(16, 2), Stage(32, 1, 1e-3)]


def test_recipe_is_frozen_and_checked():
    r = Recipe(stages=[(32, 2, 1e-3), (64, 1, 1e-3)])
    assert r.stages == (Stage(32, 2, 1e-3), Stage(64, 1, 1e-3)) and r.sizes == [32, 64] and r.epochs == [2, 1]
    with pytest.raises(dataclasses.FrozenInstanceError): r.bs = 3
    for kw, msg in [(dict(opt='lamb'), "unknown optimizer 'lamb'"), (dict(mix='blend'), "unknown mix 'blend'"),
                    (dict(sched='cosine'), "unknown schedule 'cosine'"), (dict(tta='five'), "unknown tta 'five'"),
                    (dict(bs=1), 'batch size must be at least 2'), (dict(arch='resnet50'), "unknown arch 'resnet50'"),
                    (dict(ema=1.5), 'ema must be a decay in (0, 1)'), (dict(pct_start=1.), 'pct_start must be in [0, 1)'),
                    (dict(stages=[(32, 300), (64, 201)]), '501 epochs in all'),
                    (dict(stages=[(32, 2, 0.1), (64, 1, 0.2)], sched='one'), "sched 'one' runs one cycle")]:
        with pytest.raises(PlanError, match=msg.replace('(', r'\(').replace(')', r'\)').replace('[', r'\[')): Recipe(**kw)


def test_presets_are_recipes_with_their_names():
    assert set(RECIPES) == {'demo', 'sprint', 'full'}
    for name, r in RECIPES.items():
        assert isinstance(r, Recipe) and r.name == name and sum(r.epochs) <= MAX_EPOCHS
    assert get_recipe('demo').data is None and get_recipe('sprint').tta == 'flip' and sum(get_recipe('full').epochs) == 400
    d = get_recipe('full').to_dict()
    assert d['stages'] == [[32, 40, 0.2], [48, 80, 0.2], [64, 280, 0.2]] and d['mix'] == 'mixcut'


def test_resolve_plan_overrides_and_refuses_unknown_settings():
    r = resolve_plan('sprint', epochs=[1, 2], bs=256, mix='cutmix', ema=0.999)
    assert (r.epochs, r.bs, r.mix, r.ema, r.arch) == ([1, 2], 256, 'cutmix', 0.999, 'dense')
    assert get_recipe('sprint').bs == 1024   # the preset itself is unchanged
    with pytest.raises(PlanError, match=r"unknown setting\(s\) 'momentum'"): resolve_plan('demo', momentum=0.9)


@pytest.mark.parametrize('text,secs', [('90s', 90.), ('9m', 540.), ('1.5h', 5400.), ('60', 60.), (45, 45.), ('2min', 120.)])
def test_check_budget_reads_durations(text, secs):
    assert check_budget(text) == secs


@pytest.mark.parametrize('bad', ['9 parsecs', 'fast', '-5m', 0, float('nan'), True])
def test_check_budget_refuses_what_is_not_a_duration(bad):
    with pytest.raises(PlanError, match='budget'): check_budget(bad)


def test_batch_size_scales_the_learning_rate_where_the_preset_says_so():
    "sprint's rates are for its batch of 1024: --bs 512 halves them (SGD: linear); the demo's (no scale_lr) stay; given rates stay"
    assert resolve_plan('sprint', bs=512).lrs == [0.4, 0.4] and resolve_plan('sprint').lrs == [0.8, 0.8]
    assert resolve_plan('sprint', bs=512, lrs=[0.3]).lrs == [0.3, 0.3]
    assert resolve_plan('demo', bs=32).lrs == [1e-2, 1e-2]
    assert abs(resolve_plan('demo', bs=256, scale_lr=True).lrs[0] - 2e-2) < 1e-12   # adam: the square root


def test_budget_stages_keeps_proportions_and_fits():
    stages = [Stage(24, 6, 1e-2), Stage(32, 10, 1e-2)]
    plan = budget_stages(stages, epoch_s=[1.0, 1.5], fixed_s=[0.2, 0.3], budget_s=60)
    cost = sum(s.epochs*e for s, e in zip(plan, [1.0, 1.5])) + 0.5
    assert cost <= 60 and cost > 60 - 1.5 - 1.0          # no room left for another epoch of either stage
    assert abs(plan[1].epochs/plan[0].epochs - 10/6) < 0.2 and [s.lr for s in plan] == [1e-2, 1e-2]
    # a small budget: at least one epoch per stage; a huge one: at most the rules' 500 epochs
    assert [s.epochs for s in budget_stages(stages, [1., 1.], [0., 0.], 2.5)] == [1, 1]
    assert sum(s.epochs for s in budget_stages(stages, [1e-3, 1e-3], [0., 0.], 1e6)) <= MAX_EPOCHS
    # short of one epoch per stage: the earliest stages go, the last size stays; refused only when not even it fits
    assert budget_stages(stages, [10., 10.], [1., 1.], 15) == [Stage(32, 1, 1e-2)]
    with pytest.raises(PlanError, match='one epoch at 32 px'): budget_stages(stages, [10., 10.], [1., 1.], 9)


def test_recipe_switches_off_with_zero_and_none():
    "ema 0 and mix 'none' turn a preset's EMA and mixing off (None as an override keeps the preset's)"
    r = resolve_plan('full', ema=0, mix='none')
    assert r.ema is None and r.mix is None
    assert resolve_plan('full', ema=None, mix=None).mix == 'mixcut'
    assert resolve_plan('sprint', test_size=72).test_size == 72
    with pytest.raises(PlanError, match='size must be an integer >= 8'): Recipe(test_size=4)


def test_budget_spent_before_training_is_one_line():
    "A deadline already past when training is to start: one line, no trial fit (no learner is even looked at), no negative seconds"
    import time
    from tiny_fastai.fit import fit_budget
    with pytest.raises(PlanError, match=r'^the budget was used up before training could start \(on start-up, the data and the learner\)'):
        fit_budget(None, [Stage(16, 1)], time.time() - 18)


def test_arch_presets_named_once():
    "The model presets are named in plan.ARCH_PRESETS (the CLI's --arch reads it without torch); the builders and the plain-torch runtime follow it"
    from tiny_fastai.models import ARCHS
    from tiny_fastai.runtime import NETS
    from tiny_fastai.plan import ARCH_PRESETS
    assert list(ARCHS) == list(ARCH_PRESETS) == list(NETS)
