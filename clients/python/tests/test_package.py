"""The package as users get it: type hints that mypy accepts in strict mode,
and a wheel and an sdist that install in a fresh virtualenv and run the
README's quick start against `idem demo`."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

PKG = Path(__file__).resolve().parents[1]


def test_type_hints_pass_mypy_strict():
    r = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(PKG / "src" / "idem_client")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_wheel_and_the_sdist_install_in_a_fresh_virtualenv(tmp_path, demo):
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--sdist", "--outdir", str(dist), str(PKG)],
        check=True,
        capture_output=True,
    )
    wheels, sdists = list(dist.glob("*.whl")), list(dist.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, list(dist.iterdir())
    quick_start = (
        "from idem_client import IdempotentClient\n"
        "with IdempotentClient() as client:\n"
        f"    print(client.post('{demo.url}/payments', json={{'amount': 42.5, 'currency': 'EUR', 'recipient': 'acct_123'}}).replayed)\n"
    )
    for artifact in (wheels[0], sdists[0]):
        env = tmp_path / artifact.name.replace(".", "-")
        venv.create(env, with_pip=True)
        python = env / "bin" / "python"
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(artifact)],
            check=True,
            capture_output=True,
        )
        out = subprocess.run([str(python), "-c", quick_start], check=True, capture_output=True, text=True)
        assert out.stdout.strip() == "False", out
        typed = subprocess.run(
            [str(python), "-c", "import idem_client, pathlib; print((pathlib.Path(idem_client.__file__).parent / 'py.typed').exists())"],
            check=True,
            capture_output=True,
            text=True,
        )
        assert typed.stdout.strip() == "True"
    assert demo.payments() == 2
