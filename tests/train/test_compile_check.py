"""Ahead-of-time TPU compile check: every program of a task compiled by libtpu on this CPU
machine, with no per-model code in the check.

The check runs in a subprocess: conftest pins this process to 8 fake CPU devices, and libtpu
has to be loaded by a fresh jax with the environment the module sets for itself.
"""
import os
import re
import subprocess
import sys

import pytest

from mufm.lm.model import LMConfig, param_count

EXPERIMENT = "experiments/musiclm_stage_v5e_256.gin"
LAST_LINE = re.compile(r"^fits=(true|false) per_chip_bytes=(\d+) hbm_bytes=(\d+)$")

pytest.importorskip("libtpu", reason="the compile check needs libtpu (pip install -e .[tpu])")


def run_check(*args: str, timeout: int = 900) -> tuple[int, str, dict]:
    proc = subprocess.run([sys.executable, "-m", "mufm.train.compile_check", *args],
                          capture_output=True, text=True, timeout=timeout, env=dict(os.environ))
    lines = proc.stdout.strip().splitlines()
    m = LAST_LINE.match(lines[-1]) if lines else None
    assert m, f"no result line (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return proc.returncode, proc.stdout, {"fits": m.group(1) == "true",
                                          "per_chip": int(m.group(2)), "hbm": int(m.group(3))}


@pytest.mark.slow  # one real TPU compile of a 24-layer model: minutes on a shared CPU
def test_musiclm_stage_fits_v5e_256():
    # The train step only: the 24-layer eval program costs another compile of minutes;
    # the LM's eval program is compiled (cheaply) by the next test.
    rc, out, r = run_check(f"--gin_file={EXPERIMENT}", "--topology=v5e:16x16", "--programs=train")
    assert rc == 0, out
    assert r["fits"] and r["hbm"] == 16 * 2**30
    assert r["per_chip"] < r["hbm"]
    # At least the fp32 parameters and both Adam moments, spread over all 256 chips.
    params = param_count(LMConfig(vocab_size=8448, d_model=1024, num_layers=24, num_heads=16,
                                  d_ff=4096, activation="swiglu", position="relative"))["total"]
    assert params > 400e6
    assert r["per_chip"] > 12 * params / 256
    assert "XLA FLOPs per step" in out and "model FLOPs/step" in out
    assert "program 'train'" in out and "program 'eval'" not in out


def test_lm_train_and_eval_programs_compile():
    """Both programs the LM task declares, through the generic check (the tiny experiment
    on a 4-chip slice)."""
    rc, out, r = run_check("--gin_file=experiments/synthetic_tiny.gin", "--topology=v5e:2x2",
                           timeout=900)
    assert rc == 0 and r["fits"], out
    assert "program 'train' on v5e:2x2" in out and "program 'eval' on v5e:2x2" in out


@pytest.mark.slow  # a TPU compile of the tiny codec's GAN step: ~1-2 min
def test_codec_gan_program_compiles():
    """The codec task's GAN train step (generator, discriminators, both optimizers) through
    the same generic check (its tiny synthetic experiment, data parallel on a 4-chip v5e
    slice). Its warm-up step and eval programs are smaller parts of the same model; CI
    compiles only the largest (each TPU compile of the codec costs minutes on 2 cores)."""
    rc, out, r = run_check("--gin_file=experiments/codec_synthetic_tiny.gin", "--topology=v5e:2x2",
                           "--programs=train", timeout=1200)
    assert rc == 0, out
    assert "program 'train' on v5e:2x2 (4 devices)" in out, out
    assert "program 'warmup'" not in out and "program 'reconstruct_1'" not in out  # --programs
    flops = {m.group(1): float(m.group(2)) for m in re.finditer(
        r"program '(\w+)'.*?XLA FLOPs per step  ([\d.e+]+) per chip", out, re.S)}
    assert flops["train"] > 0, flops


def test_unknown_program_is_named():
    proc = subprocess.run([sys.executable, "-m", "mufm.train.compile_check",
                           "--gin_file=experiments/codec_synthetic_tiny.gin", "--topology=v5e:2x2",
                           "--programs=nope"], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ))
    assert proc.returncode == 2
    assert "nope" in proc.stderr and "warmup" in proc.stderr


def test_too_big_reports_does_not_fit():
    # No remat and 512 sequences of 2304 tokens on a 4-chip slice: far beyond 16 GiB per chip.
    rc, out, r = run_check(f"--gin_file={EXPERIMENT}", "--topology=v5e:2x2",
                           "--gin.MeshConfig.ici_parallelism=(1, -1, 1)",
                           "--gin.LMConfig.remat_policy='none'", "--programs=train", timeout=600)
    assert rc == 1, out
    assert not r["fits"] and r["per_chip"] > r["hbm"] == 16 * 2**30


def test_unknown_topology_names_the_expected_form():
    proc = subprocess.run([sys.executable, "-m", "mufm.train.compile_check",
                           f"--gin_file={EXPERIMENT}", "--topology=v5litepod-256"],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert proc.returncode == 2
    assert "v5e:16x16" in proc.stderr and "v5litepod-256" in proc.stderr


def test_parse_topology():
    from mufm.train.compile_check import TopologyError, parse_topology

    assert parse_topology("v5e:16x16") == ("v5e", (16, 16))
    assert parse_topology("v4:4x4x8") == ("v4", (4, 4, 8))
    for bad in ("v5e-256", "v9:2x2", "v5e:16", "tpu"):
        with pytest.raises(TopologyError, match="v5e:16x16"):
            parse_topology(bad)


def test_abstract_batch_names_match_a_real_batch():
    """The shapes the compile check lowers with are the features the pipeline yields."""
    from mufm.data.pipeline import DataConfig, batch_feature_names, host_batches

    for pack, streams in ((True, ("prompt", "copy")), (False, ("prompt", "copy"))):
        cfg = DataConfig(sequence_length=32, batch_size=2, pack=pack, stream_names=streams)
        batch = next(host_batches(cfg, split="train", shuffle=False))
        assert set(batch) == set(batch_feature_names(cfg)), pack
        assert all(v.shape == (2, 32) and v.dtype.kind == "i" for v in batch.values())


def test_every_pod_experiment_has_its_slice_topology():
    from mufm.train.compile_check import pod_experiments

    found = dict(pod_experiments())
    assert {"experiments/codec_paper_v5e_64.gin", "experiments/mulan_paper_v5e_16.gin",
            "experiments/musiclm_stage_v5e_256.gin", "experiments/semantic_paper_v5e_256.gin",
            "experiments/stage_coarse_v5e_256.gin", "experiments/stage_fine_v5e_256.gin",
            "experiments/stage_semantic_v5e_256.gin"} <= set(found), found
    for gin_file, topology in found.items():  # v5e-N: N chips
        chips = int(re.search(r"_v5e_(\d+)\.gin$", gin_file).group(1))
        a, b = (int(x) for x in topology.split(":")[1].split("x"))
        assert topology.startswith("v5e:") and a * b == chips, (gin_file, topology)


def _readme_walk():
    """The README's table of the pod-experiment walk: {experiment: [fits column per program]}
    and the digest block under it."""
    from mufm.train.compile_check import DIGESTS_HEADER

    with open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md")) as f:
        text = f.read()
    assert DIGESTS_HEADER in text, "README.md has no `compile_check --all` table"
    head, tail = text.split(DIGESTS_HEADER, 1)
    digests = dict(re.findall(r"^- `(\w+)`: `(\w+)`$", tail.split("\n\n", 1)[0], re.M))
    fits, current = {}, None
    table = head[head.rindex("| experiment | topology |"):]
    for line in table.splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        current = cells[0] or current
        fits.setdefault(current, []).append(cells[5])
    return fits, digests


def test_readme_walk_is_of_the_configs_as_they_are():
    """Compiling every pod experiment for its slice takes far longer than CI has on 2 cores
    (the README gives the times), so CI checks the table's provenance instead: every pod
    experiment has rows, all fit, and its config digest is the one the table was made with.
    Changing a pod config (or adding one) fails here until `python -m mufm.train.
    compile_check --all` is run again and its output replaces the README's table."""
    from mufm.train.compile_check import pod_experiments

    fits, digests = _readme_walk()
    proc = subprocess.run([sys.executable, "-m", "mufm.train.compile_check", "--all", "--digests"],
                          capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    now = dict(re.findall(r"^- `(\w+)`: `(\w+)`$", proc.stdout, re.M))
    names = {os.path.basename(g)[:-4] for g, _ in pod_experiments()}
    assert set(now) == names
    stale = sorted(n for n in names if digests.get(n) != now[n])
    assert not stale, (f"{stale}: config changed (or new) since the README's compile table was "
                       f"made; rerun `python -m mufm.train.compile_check --all`")
    missing = sorted(names - set(fits))
    assert not missing, (f"{missing}: no rows in the README's compile table; run `python -m "
                         f"mufm.train.compile_check --all` and put its table there")
    assert set(fits) == names, sorted(fits)
    for name, column in fits.items():
        assert column and all(c == "yes" for c in column), (name, column)


def _pod_experiments():
    from mufm.train.compile_check import pod_experiments

    return pod_experiments()


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("MUFM_COMPILE_POD_EXPERIMENTS"),
                    reason="every pod experiment on its slice takes ~1 h on 2 shared cores (the "
                           "README's table gives each time); MUFM_COMPILE_POD_EXPERIMENTS=1 runs it")
@pytest.mark.parametrize("gin_file,topology", _pod_experiments())
def test_pod_experiment_compiles_and_fits(gin_file, topology):
    """The real check behind the README's table: every program of the experiment compiled by
    libtpu for its slice, each within the chip's HBM (nothing reused from an earlier run)."""
    rc, out, r = run_check(f"--gin_file={gin_file}", f"--topology={topology}", timeout=3600)
    assert rc == 0 and r["fits"] and r["per_chip"] <= r["hbm"], out
