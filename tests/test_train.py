"""Training: data preparation, the loop, exact resume, checkpoints, budgets and bad input.

Tiny models (d_model 32, 2 layers, byte vocabulary) on a small corpus (this package's own
source), a few steps each; the resume tests run ``python -m blockdsl train`` in real
subprocesses and stop them with real signals.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import blockdsl
from blockdsl import checkpoint as ckpt
from blockdsl.config import load_config
from blockdsl.errors import BudgetError, ConfigError
from blockdsl.train import WALL_CLOCK_FIELDS, CheckpointError, DataError, Run, TrainingError
from blockdsl.train.autocompile import CompileChoice
from blockdsl.train.data import TokenData, byte_tokenizer, prepare
from blockdsl.train.optim import build_optimizers, build_scheduler
from blockdsl.train.settings import OptimSettings, TrainSettings, resolve

ROOT = Path(__file__).resolve().parent.parent
TINY = {
    "vocab": 256,
    "d_model": 32,
    "context": 64,
    "layers": "block*2",
    "defaults": {"Attn": {"heads": 2, "kv_heads": 1}, "MLP": {"hidden": 64}},
}
TINY_SET = [
    "--set", "vocab=256", "--set", "d_model=32", "--set", "context=64",
    "--set", "layers=block*2", "--set", "defaults.Attn.heads=2",
    "--set", "defaults.Attn.kv_heads=1", "--set", "defaults.MLP.hidden=64",
]  # fmt: skip


def tiny_train(**train: object) -> dict:
    return {
        "steps": 2,
        "batch_size": 4,
        "seq_len": 32,
        "eval_every": 10,
        "eval_batches": 2,
        **train,
    }


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data")
    prepare([str(ROOT / "blockdsl")], out, glob="*.py", tokenizer="byte", progress=False)
    return out


def strip_clock(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k not in WALL_CLOCK_FIELDS} for m in metrics]


# ==================================================================== data
def test_byte_data_matches_utf8_and_its_tokenizer(data_dir: Path) -> None:
    meta = json.loads((data_dir / "meta.json").read_text())
    assert meta["vocab"] == 256 and meta["dtype"] == "uint16"
    assert meta["train_tokens"] > 0 and meta["val_tokens"] > 0
    assert len(meta["sources"][0]["sha256"]) == 64
    data = TokenData(data_dir)
    head = bytes(data.splits["train"][:2000].tolist())
    text = head.decode("utf-8", errors="ignore")
    assert byte_tokenizer().encode(text).ids == list(text.encode("utf-8"))
    from tokenizers import Tokenizer

    saved = Tokenizer.from_file(str(data_dir / "tokenizer.json"))
    assert saved.decode(list(text.encode("utf-8"))) == text


@pytest.mark.parametrize("tokenizer", ["char", "bpe:300"])
def test_char_and_bpe_round_trip(tmp_path: Path, tokenizer: str) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(6):
        (docs / f"{i}.txt").write_text(f"document {i}: the quick brown fox — jumps {i * 7}\n" * 20)
    meta = prepare([str(docs)], tmp_path / "out", tokenizer=tokenizer, val_fraction=0.3)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tmp_path / "out" / "tokenizer.json"))
    assert meta["vocab"] == tok.get_vocab_size()
    data = TokenData(tmp_path / "out")
    ids = data.splits["train"][:200].tolist()
    assert max(ids) < meta["vocab"]
    assert "quick brown fox" in tok.decode(ids)
    assert meta["train_tokens"] + meta["val_tokens"] == data.tokens("train") + data.tokens("val")


def test_jsonl_and_hf_sources(tmp_path: Path) -> None:
    rows = [{"text": f"row {i} says hello"} for i in range(30)]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    meta = prepare([str(path)], tmp_path / "a", val_fraction=0.2, seed=1)
    total = sum(len(r["text"].encode()) for r in rows)
    assert meta["train_tokens"] + meta["val_tokens"] == total
    assert meta["sources"][0]["documents"] == 30
    pytest.importorskip("datasets")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    folder = tmp_path / "hub"
    folder.mkdir()
    (folder / "train.jsonl").write_text(path.read_text())
    meta_hf = prepare([f"hf:{folder}:train"], tmp_path / "b", val_fraction=0.2, seed=1)
    assert meta_hf["sources"][0]["documents"] == 30
    assert meta_hf["train_tokens"] == meta["train_tokens"]


def test_data_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        prepare([str(tmp_path / "nope")], tmp_path / "out")
    with pytest.raises(DataError, match="unknown tokenizer"):
        prepare([str(ROOT / "README.md")], tmp_path / "out", tokenizer="wordpiece")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "x"}\n')
    with pytest.raises(DataError, match="'text'"):
        prepare([str(bad)], tmp_path / "out")
    prepare([str(ROOT / "README.md")], tmp_path / "ok")
    with pytest.raises(DataError, match="already holds"):
        prepare([str(ROOT / "README.md")], tmp_path / "ok")
    (tmp_path / "ok" / "val.bin").write_bytes(b"\0\0")
    with pytest.raises(DataError, match="truncated"):
        TokenData(tmp_path / "ok")


def test_batches_are_a_pure_function_of_seed_and_step(data_dir: Path) -> None:
    a, b = TokenData(data_dir), TokenData(data_dir)
    x1, y1 = a.batch(seed=3, step=7, rows=4, seq_len=16)
    x2, y2 = b.batch(seed=3, step=7, rows=4, seq_len=16)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert torch.equal(x1[:, 1:], y1[:, :-1])
    assert not torch.equal(x1, a.batch(seed=3, step=8, rows=4, seq_len=16)[0])
    assert not torch.equal(x1, a.batch(seed=4, step=7, rows=4, seq_len=16)[0])
    # a 2-rank run reads slices of the same batch
    whole, _ = a.batch(seed=3, step=7, rows=8, seq_len=16)
    assert whole.shape == (8, 16)


# ==================================================================== the loop
@pytest.mark.slow
def test_loss_falls_and_run_records_everything(data_dir: Path, tmp_path: Path) -> None:
    run = blockdsl.train(
        "tiny",
        data=data_dir,
        out=tmp_path / "run",
        progress=False,
        train=tiny_train(steps=40, global_batch_size=8),
        optim={"lr": 1e-2, "warmup": 5},
        **TINY,
    )
    first, last = run.metrics[0]["loss"], run.metrics[-1]["loss"]
    assert last < first - 1.5, (first, last)
    for line in run.metrics:
        assert {"step", "tokens", "loss", "lr", "grad_norm", "tokens_per_s", "elapsed"} <= set(line)
    assert [m["step"] for m in run.metrics] == list(range(1, 41))
    assert run.metrics[-1]["tokens"] == 40 * 8 * 32
    assert [m["step"] for m in run.metrics if "val_loss" in m] == [10, 20, 30, 40]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 40 and summary["final_loss"] == last
    assert summary["params"] == run.model.num_params()
    mem = summary["memory"]
    assert 0.75 <= mem["measured_peak"] / mem["estimate"]["total"] <= 1.25, mem
    for name in ("config.toml", "metrics.jsonl", "tokenizer.json", "summary.json"):
        assert (tmp_path / "run" / name).is_file()
    # the resolved config rebuilds the model and round-trips its [train]/[optim] tables
    config = load_config(tmp_path / "run" / "config.toml")
    train_settings, optim_settings = resolve(config)
    assert train_settings.steps == 40 and train_settings.global_batch_size == 8
    assert optim_settings.lr == 1e-2 and optim_settings.betas == (0.9, 0.95)
    # checkpoints reload into an equal model
    loaded = Run.load(tmp_path / "run").load_model()
    for (name, a), (_, b) in zip(run.model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_toml_tables_round_trip(tmp_path: Path) -> None:
    text = (ROOT / "examples" / "tiny.toml").read_text()
    text += '\n[train]\nsteps = 12\nprecision = "bfloat16"\ncompile = "auto"\n'
    text += '\n[optim]\nname = "muon"\nschedule = "wsd"\nbetas = [0.8, 0.99]\n'
    path = tmp_path / "c.toml"
    path.write_text(text)
    config = load_config(path)
    assert config.train == {"steps": 12, "precision": "bfloat16", "compile": "auto"}
    again = tmp_path / "again.toml"
    again.write_text(config.to_toml())
    assert load_config(again) == config
    assert resolve(load_config(again)) == resolve(config)
    overridden = load_config(path, train={"steps": 5}, optim={"lr": 0.5})
    assert overridden.train["steps"] == 5 and overridden.train["compile"] == "auto"
    assert overridden.optim["lr"] == 0.5 and overridden.optim["name"] == "muon"


def test_unknown_and_bad_keys_list_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="unknown \\[train\\] key 'stpes'") as info:
        resolve(load_config("tiny", train={"stpes": 3}))
    assert "did you mean 'steps'" in str(info.value) and "seq_len" in str(info.value)
    with pytest.raises(ConfigError, match="one of cosine, wsd, constant"):
        resolve(load_config("tiny", train={"steps": 3}, optim={"schedule": "linear"}))
    with pytest.raises(ConfigError, match="needs a budget"):
        resolve(load_config("tiny"))
    with pytest.raises(ConfigError, match="multiple of batch_size"):
        resolve(load_config("tiny", train={"steps": 1, "batch_size": 3, "global_batch_size": 8}))


def test_schedules_are_torchs(data_dir: Path) -> None:
    model = torch.nn.Linear(4, 4)
    for schedule, end in (("cosine", 1e-4), ("wsd", 1e-4), ("constant", 1e-2)):
        settings = OptimSettings(lr=1e-2, min_lr=1e-4, warmup=4, schedule=schedule)
        optimizer = build_optimizers(model, settings)[0]
        scheduler = build_scheduler(optimizer, settings, 20)
        lrs = []
        for _ in range(20):
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        assert lrs[0] < lrs[3] < lrs[4] == pytest.approx(1e-2)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(end), schedule
        if schedule == "wsd":
            assert lrs[4:15] == [pytest.approx(1e-2)] * 11


@pytest.mark.slow
def test_muon_with_accumulation_and_moe_aux_loss(data_dir: Path, tmp_path: Path) -> None:
    run = blockdsl.train(
        "Norm->Attn->+->Norm->MoE(experts=4, k=2, hidden=32)->+",
        data=data_dir,
        out=tmp_path / "run",
        progress=False,
        train=tiny_train(steps=4, global_batch_size=8, eval_every=0),
        optim={"name": "muon", "lr": 0.02},
        **TINY,
    )
    assert all("aux_loss" in m and m["aux_loss"] > 0 for m in run.metrics)
    assert all(m["aux_loss"] < m["loss"] for m in run.metrics)
    state = torch.load(ckpt.checkpoints(run.dir)[-1].state, weights_only=True)
    assert len(state["optimizers"]) == 2  # AdamW for the rest, Muon for the hidden matrices


@pytest.mark.slow
def test_compile_auto_stays_eager_on_short_runs(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BLOCKDSL_CACHE_DIR", str(tmp_path / "cache"))
    lines: list[str] = []
    settings = TrainSettings(steps=10, compile="auto", seq_len=32)
    model = blockdsl.build_model("tiny", **TINY)
    choice = CompileChoice(model, settings, 10, 0, None, lines.append)
    choice.observe(0, 0.5)
    choice.observe(1, 0.1)
    assert choice.decision == "eager" and choice.forward is model
    assert "8 steps × 0.100 s" in lines[0] and "to compile" in lines[0]
    settings = TrainSettings(steps=10**6, compile="auto")
    long = CompileChoice(model, settings, 10**6, 0, None, [].append)
    long.observe(0, 0.5)
    long.observe(1, 0.1)
    assert long.decision is None and long.forward is not model  # compiling, to be measured
    long.observe(2, 5.0)
    long.observe(3, 0.2)  # compiled slower than eager: back to eager
    assert long.decision == "eager" and long.forward is model
    assert long.summary()["measured_compile_s"] == pytest.approx(4.8)
    # the measurement is remembered: the next run of this model decides from it
    again = CompileChoice(model, settings, 10**6, 0, None, lines.append)
    again.observe(0, 0.5)
    again.observe(1, 0.1)
    assert again.decision == "eager" and "measured before" in lines[-1]
    run = blockdsl.train(
        "tiny",
        data=data_dir,
        out=tmp_path / "run",
        progress=False,
        train=tiny_train(steps=3, compile="auto"),
        **TINY,
    )
    assert run.summary["compile"]["decision"] == "eager"
    assert run.summary["compile"]["remaining_steps"] == 1


# ==================================================================== bad input
def test_bad_input_errors(data_dir: Path, tmp_path: Path) -> None:
    common = {"progress": False, "train": tiny_train(steps=2), **TINY}
    with pytest.raises(DataError, match="does not exist"):
        blockdsl.train("tiny", data=tmp_path / "missing", out=tmp_path / "r0", **common)
    short = tmp_path / "short"
    (tmp_path / "short.txt").write_text("x" * 500)
    prepare([str(tmp_path / "short.txt")], short)
    with pytest.raises(DataError, match="shorter than one sequence of 64"):
        blockdsl.train(
            "tiny", data=short, out=tmp_path / "r1", **{**common, "train": tiny_train(seq_len=64)}
        )
    with pytest.raises(ConfigError, match="tokenizer has 256 tokens but the model's vocab is 100"):
        blockdsl.train("tiny", data=data_dir, out=tmp_path / "r2", **{**common, "vocab": 100})
    assert not (tmp_path / "r2").exists()  # nothing written, nothing allocated
    with pytest.raises(BudgetError, match="over the limit of"):
        blockdsl.train("tiny", data=data_dir, out=tmp_path / "r3", max_memory="1MB", **common)
    blockdsl.train("tiny", data=data_dir, out=tmp_path / "r4", **common)
    before = (tmp_path / "r4" / "metrics.jsonl").read_bytes()
    with pytest.raises(TrainingError, match="already holds a run"):
        blockdsl.train("tiny", data=data_dir, out=tmp_path / "r4", **common)
    assert (tmp_path / "r4" / "metrics.jsonl").read_bytes() == before
    with pytest.raises(TrainingError, match="model differs"):
        blockdsl.train(
            "tiny", data=data_dir, out=tmp_path / "r4", resume=True, **{**common, "d_model": 64}
        )


@pytest.mark.slow
def test_non_finite_loss_names_the_step_and_keeps_the_checkpoint(
    data_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(TrainingError, match=r"at step \d+") as info:
        blockdsl.train(
            "tiny",
            data=data_dir,
            out=tmp_path / "run",
            progress=False,
            train=tiny_train(steps=20, save_every=1, keep=1),
            optim={"lr": 1e30, "grad_clip": 0.0, "weight_decay": 0.0},
            **TINY,
        )
    step = int(str(info.value).split("at step ")[1].split()[0])
    kept = ckpt.checkpoints(tmp_path / "run")
    assert [c.step for c in kept] == [step - 1]
    assert str(kept[0].path) in str(info.value)
    model = blockdsl.build_model("tiny", **TINY)
    ckpt.load_checkpoint(kept[0], model)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.slow
def test_truncated_and_foreign_checkpoints_name_the_file(data_dir: Path, tmp_path: Path) -> None:
    common = {"data": data_dir, "progress": False, **TINY}
    blockdsl.train("tiny", out=tmp_path / "a", train=tiny_train(steps=2), **common)
    last = ckpt.checkpoints(tmp_path / "a")[-1]
    weights = last.weights.read_bytes()
    last.weights.write_bytes(weights[: len(weights) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors") as info:
        blockdsl.train("tiny", out=tmp_path / "a", resume=True, train=tiny_train(steps=4), **common)
    assert str(last.weights) in str(info.value)
    last.weights.write_bytes(weights)
    torch.save({"something": torch.zeros(2)}, last.state)
    with pytest.raises(CheckpointError, match="not a blockdsl training state"):
        blockdsl.train("tiny", out=tmp_path / "a", resume=True, train=tiny_train(steps=4), **common)
    last.state.write_bytes(b"\x80\x02garbage")
    with pytest.raises(CheckpointError, match=r"state\.pt"):
        blockdsl.train("tiny", out=tmp_path / "a", resume=True, train=tiny_train(steps=4), **common)
    other = blockdsl.build_model("tiny", **{**TINY, "d_model": 64})
    with pytest.raises(CheckpointError, match="cannot be loaded"):
        ckpt.load_weights(last.weights, other)


@pytest.mark.slow
def test_cli_train_and_data(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from blockdsl.cli import main

    assert main(["data", "prepare", str(ROOT / "README.md"), "--out", str(tmp_path / "d")]) == 0
    assert "train and" in capsys.readouterr().out
    args = ["train", "tiny", "--data", str(data_dir), "--out", str(tmp_path / "r"), *TINY_SET]
    assert main([*args, "--set", "train.steps=3", "--set", "train.seq_len=32", "--quiet"]) == 0
    assert len(Run.load(tmp_path / "r").metrics) == 3
    assert main([*args, "--set", "train.steps=3"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    missing = ["train", "tiny", "--data", str(tmp_path / "none"), "--set", "train.steps=1"]
    assert main([*missing, "--out", str(tmp_path / "x")]) == 2
    assert "none does not exist" in capsys.readouterr().err
    assert main([*args[:5], str(tmp_path / "r2"), "--set", "train.stpes=3"]) == 2
    assert "did you mean 'steps'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "r2").exists()


# ==================================================================== exact resume
RESUME_STEPS = 150


def _command(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "blockdsl", "train", "tiny", "--data", str(data_dir),
        "--out", str(out), *TINY_SET, "--set", f"train.steps={RESUME_STEPS}",
        "--set", "train.batch_size=2", "--set", "train.seq_len=16",
        "--set", "train.save_every=20", "--set", "train.eval_every=25",
        "--set", "train.eval_batches=2", "--set", "optim.warmup=10", "--quiet", *extra,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


@pytest.mark.slow
def test_cli_run_prints_only_its_own_lines(data_dir: Path, tmp_path: Path) -> None:
    """Issue 33.1: the end-of-run memory measurement (torch.profiler) wrote two native log
    lines (``USDT:... profiler_start`` / ``profiler_stop``) to file descriptor 2, even under
    --quiet. Captured at fd level in a real process: --quiet prints nothing at all, and the
    memory is still measured."""
    out = tmp_path / "quiet"
    command = _command(data_dir, out)
    command[command.index(f"train.steps={RESUME_STEPS}")] = "train.steps=2"
    done = subprocess.run(
        command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300
    )
    assert done.returncode == 0, done.stdout.decode()
    assert done.stdout.decode() == ""
    summary = json.loads((out / "summary.json").read_text())
    assert summary["memory"]["measured_peak"] > 0


def _run_until(data_dir: Path, out: Path, lines: int, sig: int, *extra: str) -> int:
    proc = subprocess.Popen(_command(data_dir, out, *extra), env=_env(), stderr=subprocess.PIPE)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file() and metrics.read_text().count("\n") >= lines:
            proc.send_signal(sig)
            break
        time.sleep(0.005)
    proc.communicate(timeout=120)
    return proc.returncode


@pytest.mark.slow
def test_resume_after_sigkill_and_sigterm_equals_an_uninterrupted_run(
    data_dir: Path, tmp_path: Path
) -> None:
    """Killed (SIGKILL) at step 30 or later: resumes from its last checkpoint (step 20, 40,
    ...), losing only the steps since; the resumed run is stopped (SIGTERM) at step 70 or
    later, saves where it stands and exits 128+15; resumed again it finishes, and its
    metrics.jsonl equals, bit for bit, that of a run never interrupted (made in this process
    on one thread, like the subprocesses)."""
    out = tmp_path / "run"
    assert _run_until(data_dir, out, 30, signal.SIGKILL) == -signal.SIGKILL
    killed_at = len(Run.load(out).metrics)
    assert 30 <= killed_at < RESUME_STEPS, "the run ended before the signal"
    assert ckpt.checkpoints(out)[-1].step == killed_at // 20 * 20

    assert _run_until(data_dir, out, 70, signal.SIGTERM, "--resume") == 128 + signal.SIGTERM
    stopped_at = len(Run.load(out).metrics)
    assert 70 <= stopped_at < RESUME_STEPS, "the run ended before the signal"
    assert ckpt.checkpoints(out)[-1].step == stopped_at  # saved where it stopped

    finished = subprocess.run(
        _command(data_dir, out, "--resume"), env=_env(), capture_output=True, text=True
    )
    assert finished.returncode == 0, finished.stderr

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = blockdsl.train(
            "tiny",
            data=data_dir,
            out=tmp_path / "reference",
            progress=False,
            train=tiny_train(
                steps=RESUME_STEPS, batch_size=2, seq_len=16, save_every=20, eval_every=25
            ),
            optim={"warmup": 10},
            **TINY,
        )
    finally:
        torch.set_num_threads(threads)
    assert strip_clock(Run.load(out).metrics) == strip_clock(reference.metrics)


@pytest.mark.slow
def test_a_write_cut_short_leaves_the_previous_checkpoint(data_dir: Path, tmp_path: Path) -> None:
    # a constant schedule, so that the resumed run may grow its budget
    common = {"data": data_dir, "progress": False, "optim": {"schedule": "constant"}, **TINY}
    blockdsl.train("tiny", out=tmp_path / "a", train=tiny_train(steps=2), **common)
    partial = tmp_path / "a" / "checkpoints" / ".tmp-step_0000004-99999"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    assert [c.step for c in ckpt.checkpoints(tmp_path / "a")] == [2]
    run = blockdsl.train(
        "tiny", out=tmp_path / "a", resume=True, train=tiny_train(steps=4), **common
    )
    assert run.metrics[-1]["step"] == 4 and not partial.exists()


def test_blockdsl_train_is_the_callable_package() -> None:
    import blockdsl.train as package

    assert blockdsl.train is package and callable(blockdsl.train)
    assert blockdsl.train.train.__doc__ == package.loop.train.__doc__


def small_preset(name: str) -> dict:
    """Overrides that shrink a preset to a few hundred thousand parameters, keeping its
    block structure (norms, attention kind, gating, experts, parallel branches)."""
    config = load_config(name)
    layers = "->".join(list(config.blocks)[:2])  # each of its first two named blocks once
    defaults: dict = {}
    attn = config.defaults.get("Attn", {})
    if attn:
        defaults["Attn"] = {"heads": 4, "kv_heads": 2 if attn.get("kv_heads") else 4}
        defaults["Attn"]["head_dim"] = 16
        if "window" in attn:
            defaults["Attn"]["window"] = 32
    if "hidden" in config.defaults.get("MLP", {}):
        defaults["MLP"] = {"hidden": 128}
    if "MoE" in config.defaults:
        defaults["MoE"] = {"hidden": 64, "experts": 4}
    return {"vocab": 256, "d_model": 64, "context": 128, "layers": layers, "defaults": defaults}


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(blockdsl.list_presets()))
def test_memory_estimate_within_25_percent_on_presets(
    data_dir: Path, tmp_path: Path, preset: str
) -> None:
    run = blockdsl.train(
        preset,
        data=data_dir,
        out=tmp_path / "run",
        progress=False,
        train={"steps": 2, "batch_size": 8, "seq_len": 128, "eval_every": 0, "eval_batches": 1},
        **small_preset(preset),
    )
    memory = run.summary["memory"]
    assert 0.75 <= memory["measured_peak"] / memory["estimate"]["total"] <= 1.25, memory


@pytest.mark.slow
def test_checkpoint_weights_load_with_blockdsl_load(data_dir: Path, tmp_path: Path) -> None:
    run = blockdsl.train(
        "tiny", data=data_dir, out=tmp_path / "run", progress=False, train=tiny_train(), **TINY
    )
    loaded = blockdsl.load(ckpt.checkpoints(run.dir)[-1].weights)
    for (name, a), (_, b) in zip(run.model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_training_doc_lists_every_key() -> None:
    from dataclasses import fields

    text = (ROOT / "docs" / "training.md").read_text()
    for settings in (TrainSettings, OptimSettings):
        for key in fields(settings):
            assert f"| `{key.name}` |" in text, key.name


@pytest.mark.slow
def test_readme_training_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's two training commands, as written, with the budget cut to 2 steps."""
    import shlex

    from blockdsl.cli import main

    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Training", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [shlex.split(line)[1:] for line in block.strip().splitlines()]
    assert [c[:2] for c in commands] == [["data", "prepare"], ["train", "tiny"]]
    monkeypatch.chdir(tmp_path)
    assert main(commands[0]) == 0
    assert main([*commands[1], "--set", "train.steps=2", "--quiet"]) == 0
    run = Run.load(tmp_path / "runs" / "tiny")
    assert run.steps == 2 and run.metrics[-1]["loss"] < 6


@pytest.mark.slow
def test_budgets_precision_and_checkpoint_retention(data_dir: Path, tmp_path: Path) -> None:
    common = {"data": data_dir, "progress": False, **TINY}

    def without_steps(**train: object) -> dict:
        return {k: v for k, v in tiny_train(**train).items() if k != "steps"}

    by_tokens = blockdsl.train(
        "tiny", out=tmp_path / "t", train=without_steps(tokens=5 * 4 * 32), **common
    )
    assert by_tokens.steps == 5
    by_time = blockdsl.train(
        "tiny",
        out=tmp_path / "w",
        train=without_steps(time=1e-6),
        optim={"schedule": "constant"},
        **common,
    )
    assert by_time.steps == 1  # stops after the step that passes the budget
    kept = blockdsl.train(
        "tiny",
        out=tmp_path / "k",
        train=tiny_train(steps=7, save_every=2, keep=2, precision="bfloat16"),
        **common,
    )
    assert [c.step for c in ckpt.checkpoints(kept.dir)] == [6, 7]
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in kept.metrics)
    assert kept.summary["precision"] == "bfloat16"


def test_large_files_are_streamed_with_the_same_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import blockdsl.train.data as data_module

    text = "".join(f"line {i}: naïve café ✓\n" for i in range(3000))
    (tmp_path / "big.txt").write_text(text)
    whole = prepare([str(tmp_path / "big.txt")], tmp_path / "a", tokenizer="char")
    monkeypatch.setattr(data_module, "BIG_FILE", 1000)
    monkeypatch.setattr(data_module, "CHUNK_CHARS", 777)  # cuts inside multi-byte characters
    streamed = prepare([str(tmp_path / "big.txt")], tmp_path / "b", tokenizer="char")
    assert streamed == whole
    for name in ("train.bin", "val.bin", "tokenizer.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
