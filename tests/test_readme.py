"""README.md's Python examples, each run as written (a whole script) twice, against a real
``agentmem serve`` child: a second run must work too (issue 15, item 11). The examples read
the NATS URL from AGENTMEM_NATS (default nats://127.0.0.1:4222) and the administrator's key
from AGENTMEM_DATA_DIR, else ./data."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

from tests.conftest import admin_key
from tests.realparts import clean_env
from tests.support import free_port
from tests.test_cli import Serve, serves

__all__ = ["serves"]  # the fixture, used below

README = Path(__file__).resolve().parent.parent / "README.md"


def python_examples() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", README.read_text(), re.MULTILINE | re.DOTALL)


def test_the_readme_has_python_examples() -> None:
    assert len(python_examples()) >= 4


async def run(script: Path, env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_every_python_example_runs_as_written_and_again(
    serves: list[Serve], tmp_path: Path
) -> None:
    port = free_port()
    data = tmp_path / "data"
    serve = Serve(
        ["--data-dir", str(data), "--listen", f"127.0.0.1:{port}"],
        clean_env(),
        tmp_path,
        tmp_path / "serve.log",
    )
    serves.append(serve)
    serve.start()
    url = f"nats://127.0.0.1:{port}"
    nc = await serve.connect(url)
    await nc.close()
    assert admin_key(data)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for n, example in enumerate(python_examples()):
        script = tmp_path / f"example_{n}.py"
        script.write_text(example)
        # First from another folder, the data dir named by AGENTMEM_DATA_DIR; then from the
        # folder that holds ./data, with the default.
        for env, cwd in [
            (clean_env(AGENTMEM_NATS=url, AGENTMEM_DATA_DIR=str(data)), elsewhere),
            (clean_env(AGENTMEM_NATS=url), tmp_path),
        ]:
            code, out, err = await run(script, env, cwd)
            assert code == 0, (n, example, out, err)
            assert "Traceback" not in err, (n, err)
            for marker, printed in PRINTS.items():
                if marker in example:
                    assert out.splitlines() == printed, (n, out)


# What README says an example prints, on every run (the example that calls the marker).
PRINTS = {
    "client.recall(": ["I am allergic to peanuts 2.0"],
    "client.search_messages(": [
        "assistant Noted: no peanuts in anything I suggest.",
        "user Which snack bars are safe?",
        "I am allergic to peanuts.",
    ],
}
