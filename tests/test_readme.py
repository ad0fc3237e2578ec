"""The README's examples run as written, and its walk-through shows what the app says.

A fenced block of README.md is tested when the line just above its opening fence is
an HTML comment (GitHub does not show it) of one of these two forms:

``<!-- test: NAME.py -->`` above a ``python`` block
    The block is the file ``NAME.py``. Every such file is written into one temporary
    directory, so that one block can import another (``from app import ae``), and
    each runs there in a fresh interpreter with warnings as errors: ``test_*.py``
    files under pytest, the others as scripts. ``app.py``, the quick-start app, must
    also run a job to completion.

``<!-- test: curl examples/NAME.py -->`` above a ``console`` block
    Each ``$ curl ...`` command is replayed, in README order across every block with
    the same marker, against that example app through Flask's test client. What the
    block shows under a command must be what the app answers: with ``-i``, the
    status line and the headers shown (others, such as Werkzeug's ``Date``, may be
    left out), then the body. In a shown body or header, ``...`` stands for any text
    (``, ...`` for none too), a timestamp for any timestamp, ``0b5e4f0e-...`` for any
    job id, and a run of whitespace for any whitespace. The first job id shown under
    a command that answered with a job stands for that job's real id from then on.
    Before each command the test waits until no job is ``Queued`` (a person typing
    is slower than an idle worker), and a ``GET`` is repeated until it answers as
    shown, for up to 10 s ("2 s later").

Blocks without a marker are fragments (a signature, a few settings, a config file)
and are not run.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit

import pytest
from werkzeug.test import TestResponse

from tests.conftest import wait_until

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

MARKER = re.compile(r"<!-- test: (?P<what>.+?) -->")
FENCE = re.compile(r"(?P<indent>\s*)```(?P<lang>\w*)\s*")
FILE_NAME = re.compile(r"[A-Za-z_]\w*\.py")
CURL_TARGET = re.compile(r"curl (?P<example>examples/\w+\.py)")

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
TIMESTAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
SHOWN_TOKEN = re.compile(
    rf"(?P<uuid>{UUID})|(?P<short_uuid>[0-9a-f]{{8}}-\.\.\.)|(?P<time>{TIMESTAMP})"
    r"|(?P<more>,\s*\.\.\.)|(?P<any>\.\.\.)|(?P<space>\s+)"
)
REPEAT_FOR = 10.0  # seconds a GET may take to answer as shown


@dataclass(frozen=True)
class Block:
    """A marked fenced block of the README."""

    what: str  # the marker's text after "test:"
    lang: str
    text: str
    line: int  # of the block's first line in README.md


def marked_blocks() -> list[Block]:
    """Every fenced block of README.md that a ``<!-- test: ... -->`` line precedes."""
    lines = README.read_text(encoding="utf-8").splitlines()
    blocks = []
    for number, line in enumerate(lines, start=1):
        marker = MARKER.fullmatch(line.strip())
        if marker is None:
            continue
        fence = FENCE.fullmatch(lines[number]) if number < len(lines) else None
        if fence is None:
            raise AssertionError(
                f"README.md:{number}: no fenced block after the marker"
            )
        indent = fence["indent"]
        body = []
        for inner in lines[number + 1 :]:
            if inner.strip() == "```":
                break
            body.append(inner.removeprefix(indent))
        else:
            raise AssertionError(f"README.md:{number + 1}: the block is never closed")
        text = "\n".join(body) + "\n"
        blocks.append(Block(marker["what"].strip(), fence["lang"], text, number + 2))
    return blocks


BLOCKS = marked_blocks()
FILES = {block.what: block for block in BLOCKS if block.lang == "python"}
WALK_THROUGHS = sorted(
    {match["example"] for b in BLOCKS if (match := CURL_TARGET.fullmatch(b.what))}
)


def test_the_readme_marks_its_runnable_examples() -> None:
    for block in BLOCKS:
        if block.lang == "python":
            assert FILE_NAME.fullmatch(block.what), f"README.md:{block.line}"
        else:
            assert block.lang == "console", f"README.md:{block.line}"
            assert CURL_TARGET.fullmatch(block.what), f"README.md:{block.line}"
    names = [block.what for block in BLOCKS if block.lang == "python"]
    assert len(names) == len(set(names)), "two README blocks are the same file"
    assert "app.py" in FILES  # the quick start
    assert any(name.startswith("test_") for name in FILES)  # Testing your handlers
    assert "examples/quickstart.py" in WALK_THROUGHS


@pytest.fixture(scope="module")
def readme_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding every README file block, as its file."""
    directory = tmp_path_factory.mktemp("readme")
    for name, block in FILES.items():
        (directory / name).write_text(block.text, encoding="utf-8")
    return directory


@pytest.mark.parametrize("name", sorted(FILES))
def test_a_readme_file_runs(readme_dir: Path, name: str) -> None:
    if name.startswith("test_"):
        command = ["-m", "pytest", "-q", "-W", "error", "-p", "no:cacheprovider", name]
    else:
        command = ["-W", "error", name]
    done = subprocess.run(
        [sys.executable, *command],
        cwd=readme_dir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, (
        f"README.md:{FILES[name].line}: {name} failed\n{done.stdout}\n{done.stderr}"
    )


def load(path: Path, module_name: str) -> ModuleType:
    """Import the file ``path`` as a fresh module."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def readme_app(readme_dir: Path) -> Iterator[ModuleType]:
    module = load(readme_dir / "app.py", "readme_app")
    yield module
    module.ae.shutdown(grace=0)
    del sys.modules["readme_app"]


def test_the_quick_start_app_runs_a_job(readme_app: ModuleType) -> None:
    client = readme_app.app.test_client()
    response = client.post("/api/process-data", json={"data": "hello"})
    assert response.status_code == 202
    location = response.headers["Location"]

    def done() -> bool:
        return client.get(location).get_json()["status"] == "Completed"

    wait_until(done, 10, "the quick-start job")
    assert client.get(location).get_json()["result"] == {"processedData": "HELLO"}


# -- the curl walk-through ---------------------------------------------------------


@dataclass
class Exchange:
    """One ``$ curl ...`` command of a console block and the lines shown under it."""

    command: str
    line: int
    shown: list[str] = field(default_factory=list)


def exchanges(block: Block) -> list[Exchange]:
    result: list[Exchange] = []
    lines = block.text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        number = block.line + index
        index += 1
        if not line.startswith("$ "):
            assert result or not line.strip(), f"README.md:{number}: output first"
            if result:
                result[-1].shown.append(line)
            continue
        command = line[2:]
        while command.endswith("\\"):
            command = command[:-1] + " " + lines[index].strip()
            index += 1
        result.append(Exchange(command, number))
    for exchange in result:
        while exchange.shown and not exchange.shown[-1].strip():
            exchange.shown.pop()
    return result


@dataclass(frozen=True)
class Curl:
    """What a curl command line asks for, as far as the README uses curl."""

    method: str
    path: str
    headers: dict[str, str]
    data: str | None
    include: bool  # -i: the status line and headers are shown too


def parse_curl(command: str) -> Curl:
    words = iter(shlex.split(command, comments=True))
    assert next(words) == "curl", command
    method = None
    headers: dict[str, str] = {}
    data = None
    include = False
    url = None
    for word in words:
        if word == "-X":
            method = next(words)
        elif word == "-H":
            name, _, value = next(words).partition(":")
            headers[name.strip()] = value.strip()
        elif word in ("-d", "--data"):
            data = next(words)
        elif re.fullmatch(r"-[si]+", word):
            include = include or "i" in word
        elif word.startswith("-"):
            raise AssertionError(f"this test does not know curl's {word}")
        else:
            url = word
    assert url is not None, command
    if data is not None:
        # As curl does: -d sends form data unless a content type is given.
        headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
    split = urlsplit(url if "://" in url else f"http://{url}")
    path = split.path + (f"?{split.query}" if split.query else "")
    method = method or ("POST" if data is not None else "GET")
    return Curl(method, path, headers, data, include)


def shown_pattern(shown: str, ids: dict[str, str]) -> re.Pattern[str]:
    """A regular expression for what ``shown`` abbreviates (see the docstring)."""
    parts = []
    position = 0
    for token in SHOWN_TOKEN.finditer(shown):
        parts.append(re.escape(shown[position : token.start()]))
        kind, text = token.lastgroup, token.group()
        if kind == "uuid":
            parts.append(re.escape(ids[text]) if text in ids else UUID)
        elif kind == "short_uuid":
            parts.append(UUID)
        elif kind == "time":
            parts.append(TIMESTAMP)
        elif kind == "more":
            parts.append(r"(?:,.*)?")
        elif kind == "any":
            parts.append(r".*")
        else:
            parts.append(r"\s*")
        position = token.end()
    parts.append(re.escape(shown[position:]))
    return re.compile("".join(parts), re.DOTALL)


def mismatches(
    exchange: Exchange, curl: Curl, response: TestResponse, ids: dict[str, str]
) -> list[str]:
    """How the answer differs from what the README shows under the command."""
    shown = list(exchange.shown)
    problems = []
    if curl.include:
        status = f"HTTP/1.1 {response.status}"
        if not shown or shown[0] != status:
            problems.append(f"status line: shown {shown[:1]}, answered {status!r}")
        end = shown.index("") if "" in shown else len(shown)
        for header in shown[1:end]:
            name, _, value = header.partition(":")
            real = response.headers.get(name.strip())
            if real is None or not shown_pattern(value.strip(), ids).fullmatch(real):
                problems.append(f"header {name}: shown {value.strip()!r}, was {real!r}")
        shown = shown[end + 1 :]
    body = "\n".join(shown).strip()
    real_body = response.get_data(as_text=True).strip()
    if body and not shown_pattern(body, ids).fullmatch(real_body):
        problems.append(f"body: shown\n{body}\nanswered\n{real_body}")
    return problems


def learn_job_id(
    exchange: Exchange, response: TestResponse, ids: dict[str, str]
) -> None:
    """Let the first new job id shown stand for the job the app answered with."""
    answer = response.get_json(silent=True)
    if not isinstance(answer, dict) or "id" not in answer:
        return
    for shown_id in re.findall(UUID, "\n".join(exchange.shown)):
        if shown_id not in ids:
            ids[shown_id] = answer["id"]
            return


@pytest.fixture
def example() -> Iterator[Callable[[str], ModuleType]]:
    """Loads the example app a walk-through talks to; stops its worker after."""
    modules: list[ModuleType] = []

    def loader(relative: str) -> ModuleType:
        module = load(ROOT / relative, f"readme_{Path(relative).stem}")
        modules.append(module)
        return module

    yield loader
    for module in modules:
        module.ae.shutdown(grace=0)
        sys.modules.pop(module.__name__, None)


@pytest.mark.parametrize("target", WALK_THROUGHS)
def test_the_curl_walk_through_shows_what_the_app_answers(
    target: str, example: Callable[[str], ModuleType]
) -> None:
    module = example(target)
    client = module.app.test_client()
    blocks = [b for b in BLOCKS if b.lang == "console" and b.what == f"curl {target}"]
    ids: dict[str, str] = {}

    def no_job_queued() -> bool:
        with module.app.app_context():
            jobs = [module.ae.get_job(uuid.UUID(job_id)) for job_id in ids.values()]
        return all(job is None or job.status != "Queued" for job in jobs)

    for exchange in (e for block in blocks for e in exchanges(block)):
        command = exchange.command
        for shown_id, real_id in ids.items():
            command = command.replace(shown_id, real_id)
        curl = parse_curl(command)
        wait_until(no_job_queued, REPEAT_FOR, "the worker to claim the jobs")
        deadline = time.monotonic() + REPEAT_FOR
        while True:
            response = client.open(
                curl.path, method=curl.method, headers=curl.headers, data=curl.data
            )
            learn_job_id(exchange, response, ids)
            problems = mismatches(exchange, curl, response, ids)
            if not problems or curl.method != "GET" or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert not problems, f"README.md:{exchange.line}: " + "\n".join(problems)
