"""Packaging as frameworks install it: a wheel built with ``pip wheel --no-build-isolation``
(CPU-only extension, ``FORCE_CUDA=0``, baseline CPU kernels only; or no extension at all,
``NTM_BUILD_EXTENSION=0``) installs into a fresh virtual environment whose other packages are
this environment's (linked, offline; installing without ``--no-deps`` makes pip check the
declared runtime dependencies against them), where ``ntm --help``, ``ntm --version``, the
README's library example and a tiny training run work, on the compiled kernels or on the
reference twins.  Builds the extension once: a few minutes."""
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from ntm_engine import __version__

ROOT = Path(__file__).resolve().parents[1]


def run(cmd, **kw):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert r.returncode == 0, f"{cmd}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def source_copy(dest: Path) -> Path:
    """The tracked files (no test fixtures), so the build leaves the checkout untouched."""
    files = run(["git", "ls-files"], cwd=ROOT).stdout.split()
    for f in files:
        if f.startswith("tests/") or not (ROOT / f).is_file():
            continue
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, dest / f)
    return dest


def readme_example() -> str:
    """The README's library example: the python block after ``<!-- library-example -->``."""
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- library-example -->", 1)[1].split("```python\n", 1)[1]
    return block.split("```", 1)[0]


def linked_site_packages(dest: Path) -> Path:
    """This environment's installed packages, linked one by one -- except ntm_engine, which
    pip must not see (nor try to replace) as already installed."""
    dest.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if entry.name.lower().startswith(("ntm_engine", "__editable__", "_distutils_hack",
                                          "distutils-precedence")):
            continue
        (dest / entry.name).symlink_to(entry)
    return dest


@pytest.mark.slow
@pytest.mark.parametrize("extension", [True, False], ids=["compiled", "reference"])
def test_wheel_installs_into_a_fresh_venv_and_trains(tmp_path, extension):
    src = source_copy(tmp_path / "src")
    # one CPU kernel variant keeps the build short: the wheel's packaging is what is tested
    env = dict(os.environ, FORCE_CUDA="0", NTM_CPU_CAPABILITIES="default",
               MAX_JOBS=os.environ.get("MAX_JOBS", "2"),
               NTM_BUILD_EXTENSION="1" if extension else "0")
    for name in ("PYTHONPATH", "NTM_BACKEND"):
        env.pop(name, None)
    run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q",
         "-w", tmp_path / "wheels", src], env=env, cwd=tmp_path)
    wheel, = (tmp_path / "wheels").glob(f"ntm_engine-{__version__}-*.whl")

    venv.create(tmp_path / "venv", with_pip=False)
    py = tmp_path / "venv" / "bin" / "python"
    site = Path(run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
                    ).stdout.strip())
    (site / "deps.pth").write_text(str(linked_site_packages(tmp_path / "deps")) + "\n")
    run([py, "-m", "pip", "install", "--no-index", "-q", wheel], env=env, cwd=tmp_path)

    ntm = tmp_path / "venv" / "bin" / "ntm"
    assert "{train,sample,eval,distill,compare,export,score}" in run([ntm, "--help"], env=env,
                                                                    cwd=tmp_path).stdout
    assert run([ntm, "--version"], env=env, cwd=tmp_path).stdout.strip() == f"ntm {__version__}"
    where = run([py, "-c", "import ntm_engine; print(ntm_engine.__file__)"], env=env,
                cwd=tmp_path).stdout
    assert where.startswith(str(site)), where
    backend = run([py, "-c", "import ntm_engine; print(ntm_engine.build_info()['backend'])"],
                  env=env, cwd=tmp_path)
    assert backend.stdout.strip() == ("compiled" if extension else "reference")
    # one warning, and only without the extension
    assert ("reference twins" in backend.stderr) != extension, backend.stderr
    (tmp_path / "example.py").write_text(readme_example())
    run([py, tmp_path / "example.py"], env=env, cwd=tmp_path)
    assert (tmp_path / "my_ntm" / "model.safetensors").is_file()
    run([ntm, "train", "--dataset", "two_moons", "--width", 32, "--depth", 1, "--heads", 2,
         "--transporter-layers", 1, "--transporter-hidden", 16, "--batch-size", 16,
         "--iters", 3, "--no-plots", "--no-progress", "--threads", 1, "--out", tmp_path / "run"],
        env=env, cwd=tmp_path)
    assert (tmp_path / "run" / "checkpoints" / "step_00000003" / "manifest.json").is_file()
