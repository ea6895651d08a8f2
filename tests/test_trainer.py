"""The training loop: every method learns, constraints hold, resume is exact, failures are named."""

import json
import shutil

import pytest
import torch

import sdlkit
from conftest import METHOD_SPECS, tiny_config
from sdlkit.core.objective import TermContext
from sdlkit.data import Batch, DataSource, build_source
from sdlkit.errors import CheckpointError, ConfigError, TrainingDiverged
from sdlkit.eval.metrics import reconstruction_metrics
from sdlkit.train import Trainer
from sdlkit.train.loop import lr_factor
from sdlkit.train.trainer import METRICS_FILE


@pytest.mark.parametrize("name", list(METHOD_SPECS))
def test_every_method_lowers_the_held_out_loss(name):
    config = tiny_config(name, steps=150)
    source = build_source(config.data)
    trainer = Trainer(config, source)
    before = reconstruction_metrics(trainer.model, source.eval_batch())["mse"]
    after = trainer.fit().metrics["mse"]
    assert after < 0.5 * before, f"{name}: held-out MSE {before:.3f} -> {after:.3f}"


def test_decoder_columns_stay_unit_norm():
    result = Trainer(tiny_config("relu", steps=30), build_source(tiny_config().data)).fit()
    norms = result.model.W_D.norm(dim=0)
    assert (norms - 1).abs().max() < 1e-5


def test_free_decoder_norms_move():
    config = tiny_config("relu", steps=30)
    config.model.unit_norm_decoder = False
    result = Trainer(config, build_source(config.data)).fit()
    assert (result.model.W_D.norm(dim=0) - 0.1).abs().max() > 1e-3


def weights(model):
    return {k: v.detach().clone() for k, v in model.named_tensors().items()}


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs"


@pytest.mark.parametrize("method", ["batchtopk", "jumprelu"])
def test_resume_from_checkpoint_gives_identical_weights(tmp_path, method):
    def config():
        return tiny_config(
            method, steps=40, checkpoint_every=20, dead_window=256, resample={"every_steps": 15, "n_inputs": 128}
        )

    full = Trainer(config(), build_source(config().data), tmp_path / "full").fit()
    resumed_dir = tmp_path / "resumed"
    (resumed_dir / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "full/checkpoints/step-00000020", resumed_dir / "checkpoints/step-00000020")
    trainer = Trainer(config(), build_source(config().data), resumed_dir)
    resumed = trainer.fit(resume=True)
    assert trainer.step == 40 and resumed.model is trainer.model
    assert_same_weights(weights(full.model), weights(resumed.model))
    assert full.history[-1]["loss"] == resumed.history[-1]["loss"]
    steps = [json.loads(line)["step"] for line in (resumed_dir / METRICS_FILE).read_text().splitlines()]
    assert steps == [30, 40]  # the resumed run logs only what follows its checkpoint


def test_checkpoint_from_before_init_encoder_norm_loads_and_resumes(tmp_path):
    # a checkpoint written before model.init_encoder_norm existed has no such key in its config.json
    Trainer(tiny_config(steps=10), build_source(tiny_config().data), tmp_path).fit()
    (folder,) = (tmp_path / "checkpoints").iterdir()
    saved = json.loads((folder / "config.json").read_text())
    for model in (saved["model"], saved["run"]["model"]):
        del model["init_encoder_norm"]
    (folder / "config.json").write_text(json.dumps(saved))
    assert sdlkit.load(folder).config.init_encoder_norm is None
    assert Trainer(tiny_config(steps=20), build_source(tiny_config().data), tmp_path).fit(resume=True).steps == 20


def test_resume_refuses_a_different_config(tmp_path):
    Trainer(tiny_config("topk", steps=10), build_source(tiny_config().data), tmp_path).fit()
    other = tiny_config("topk", steps=20)
    other.train.lr = 1e-2
    with pytest.raises(CheckpointError, match=r"different config \(train.lr differ\)"):
        Trainer(other, build_source(other.data), tmp_path).fit(resume=True)


def test_a_longer_run_may_resume_a_shorter_one(tmp_path):
    Trainer(tiny_config("topk", steps=10), build_source(tiny_config().data), tmp_path).fit()
    trainer = Trainer(tiny_config("topk", steps=20), build_source(tiny_config().data), tmp_path)
    assert trainer.fit(resume=True).steps == 20


def test_fresh_run_refuses_a_folder_with_checkpoints(tmp_path):
    Trainer(tiny_config(steps=5), build_source(tiny_config().data), tmp_path).fit()
    with pytest.raises(ConfigError, match="already holds checkpoints: resume it"):
        Trainer(tiny_config(steps=5), build_source(tiny_config().data), tmp_path).fit()


def test_resume_without_checkpoint_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="nothing to resume"):
        Trainer(tiny_config(steps=5), build_source(tiny_config().data), tmp_path).fit(resume=True)


class PoisonedSource(DataSource):
    """Wraps a source and puts a NaN into the batch at one stream position."""

    def __init__(self, source, bad_position):
        self.source, self.bad_position = source, bad_position
        self.n_in, self.n_out = source.n_in, source.n_out
        self.in_blocks, self.out_blocks = source.in_blocks, source.out_blocks

    def batch(self, index, batch_size):
        batch = self.source.batch(index, batch_size)
        if index == self.bad_position:
            x = batch.x_p.clone()
            x[0, 0] = float("nan")
            return Batch(x, x)
        return batch

    def eval_batch(self):
        return self.source.eval_batch()


def test_nan_batch_stops_with_step_and_last_checkpoint(tmp_path):
    config = tiny_config(steps=20, checkpoint_every=5)
    source = PoisonedSource(build_source(config.data), bad_position=7)
    trainer = Trainer(config, source, tmp_path)
    with pytest.raises(TrainingDiverged, match=r"step 7: the batch holds NaN .* last good checkpoint: .*step-00000005"):
        trainer.fit()
    # the checkpoint before the failure is intact and loadable; nothing after it was written
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000005"]
    assert torch.isfinite(sdlkit.load(tmp_path).W_E).all()


class NaNAtStep:
    name = "poison"

    def __init__(self, at):
        self.at = at

    def __call__(self, ctx: TermContext):
        return ctx.x_r.new_tensor(float("nan") if ctx.step == self.at else 0.0)


def test_nan_loss_stops_with_its_own_message():
    config = tiny_config(steps=10)
    trainer = Trainer(config, build_source(config.data), extra_terms=[NaNAtStep(3)])
    with pytest.raises(TrainingDiverged, match="step 3: the loss became NaN or inf .* none was written yet"):
        trainer.fit()


def test_lr_schedule_warmup_and_decay():
    cfg = tiny_config(steps=100, lr_warmup_steps=10, lr_decay="linear", lr_decay_start=0.8).train
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, cfg) == 1.0 and lr_factor(79, cfg) == 1.0
    assert lr_factor(90, cfg) == pytest.approx(0.5)
    cfg.lr_decay = "cosine"
    assert lr_factor(90, cfg) == pytest.approx(0.5) and lr_factor(99, cfg) < 0.01
    cfg.lr_decay = "none"
    assert lr_factor(99, cfg) == 1.0


def test_metrics_log_has_the_promised_fields(tmp_path):
    Trainer(tiny_config(steps=20), build_source(tiny_config().data), tmp_path).fit()
    records = [json.loads(line) for line in (tmp_path / METRICS_FILE).read_text().splitlines()]
    assert [r["step"] for r in records] == [10, 20]
    assert {"loss", "mse", "l0", "dead_fraction", "lr", "samples_per_s"} <= set(records[0])
    assert records[0]["l0"] <= 4  # topk k = 4


def test_bf16_autocast_trains():
    config = tiny_config("topk", steps=80, precision="bf16")
    source = build_source(config.data)
    trainer = Trainer(config, source)
    before = reconstruction_metrics(trainer.model, source.eval_batch())["mse"]
    result = trainer.fit()
    assert result.model.W_E.dtype == torch.float32  # weights stay float32 under autocast
    assert result.metrics["mse"] < 0.5 * before
