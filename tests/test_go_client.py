"""The Go client (clients/go): its example against a real gateway process (with caller keys too), and its
generated code is current.

Go and its libraries come from Debian (`.ci/setup-go.sh`); the example builds offline in GOPATH
mode. Without them the tests skip loudly, except in CI (AIP_CI set), where they fail.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import NoReturn

import pytest

from tests.gateway_process import gateway_env, running_gateway
from tests.test_client_keys import ALPHA_KEY, WRONG_KEY, keyed_gateway_env

ROOT = Path(__file__).resolve().parent.parent
GO_CLIENT = ROOT / "clients" / "go"
DEBIAN_GOPATH = Path("/usr/share/gocode")

# Read at import: conftest's autouse fixture removes every AIP_* variable before each test.
IN_CI = bool(os.environ.get("AIP_CI"))

#: The Debian package that puts each import path the example needs into /usr/share/gocode.
DEBIAN_GO_PACKAGES = {
    "google.golang.org/grpc": "golang-google-grpc-dev",
    "google.golang.org/protobuf": "golang-google-protobuf-dev",
    "google.golang.org/genproto/googleapis/rpc/errdetails": "golang-google-genproto-dev",
    "github.com/golang/protobuf/proto": "golang-github-golang-protobuf-1-5-dev",
}

MESSAGE = "你好 world from Go"
DELAY_MS = 250


def toolchain_missing(what: str, untested: str = "the Go client was NOT tested") -> NoReturn:
    """Skip, saying loudly what was not tested; in CI, fail instead."""
    message = f"{what}: {untested} (install the toolchain with .ci/setup-go.sh)"
    if IN_CI:
        pytest.fail(f"{message}; AIP_CI is set and CI never skips", pytrace=False)
    pytest.skip(message)


def missing_go_packages() -> list[str]:
    """The Debian Go packages the example needs that are not installed."""
    missing = [package for path, package in DEBIAN_GO_PACKAGES.items() if not (DEBIAN_GOPATH / "src" / path).is_dir()]
    # golang-github-golang-protobuf-1-3-dev fills the same directory with a github.com/golang/protobuf
    # that predates the protobuf APIv2: the example builds, then panics on its first message.
    if (DEBIAN_GOPATH / "src/github.com/golang/protobuf/proto/table_marshal.go").exists():
        missing.append("golang-github-golang-protobuf-1-5-dev (1-3 is installed instead)")
    return missing


@pytest.fixture(scope="session")
def go_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example, built once per session with clients/go/build.sh."""
    if shutil.which("go") is None:
        toolchain_missing("Go not installed (no `go` on PATH)")
    if missing := missing_go_packages():
        toolchain_missing(f"Debian Go packages missing: {', '.join(missing)}")
    binary = tmp_path_factory.mktemp("go") / "example"
    env = dict(os.environ)
    if not {"GOCACHE", "XDG_CACHE_HOME", "HOME"} & env.keys():
        env["GOCACHE"] = str(binary.parent / "go-cache")  # go refuses to build without a cache
    built = subprocess.run(
        [str(GO_CLIENT / "build.sh"), str(binary)], env=env, capture_output=True, text=True, timeout=300
    )
    assert built.returncode == 0, f"clients/go/build.sh failed:\n{built.stdout}{built.stderr}"
    return binary


async def run_timed(command: list[str], env: dict[str, str]) -> tuple[int, list[tuple[float, str]], str]:
    """Run ``command`` in the repository: its exit code, its stdout lines each with when it arrived, its stderr."""
    process = await asyncio.create_subprocess_exec(
        *command, env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None and process.stderr is not None
    lines: list[tuple[float, str]] = []
    try:
        async with asyncio.timeout(30):
            while line := await process.stdout.readline():
                lines.append((time.monotonic(), line.decode().rstrip("\n")))
            stderr = (await process.stderr.read()).decode()
            return await process.wait(), lines, stderr
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_go_example_lists_services_streams_a_chat_and_reads_error_details(go_example: Path) -> None:
    async with running_gateway(gateway_env(), ROOT) as gateway:
        # The target through AIP_TARGET: the example's documented default.
        code, timed_lines, stderr = await run_timed(
            [str(go_example), "-message", MESSAGE, "-delay-ms", str(DELAY_MS)],
            gateway_env(AIP_TARGET=gateway.target),
        )
    lines = [line for _, line in timed_lines]
    output = "\n".join(lines)
    assert code == 0, f"the Go example exited {code}\nstdout:\n{output}\nstderr:\n{stderr}"

    assert "service echo type=chat provider=echo ready=true" in lines, output
    assert "service echo_workflow type=workflow provider=echo_workflow ready=true" in lines, output

    tokens = [(at, json.loads(line.removeprefix("token "))) for at, line in timed_lines if line.startswith("token ")]
    assert "".join(token for _, token in tokens) == MESSAGE, output
    assert len(tokens) == len(MESSAGE.split()), output
    finished = [at for at, line in timed_lines if line == f"finish FINISH_REASON_STOP output_tokens={len(tokens)}"]
    assert len(finished) == 1, output
    # Printed as they arrive: the echo service waits DELAY_MS before each word, so the first
    # token comes (len - 1) * DELAY_MS before the stream ends; buffered output would come at once.
    assert finished[0] - tokens[0][0] >= 0.6 * (len(tokens) - 1) * DELAY_MS / 1000, output

    assert any(
        line.startswith("error code=NOT_FOUND message=") and "no service named 'no_such_service'" in line
        for line in lines
    ), output
    assert any(line.startswith("error info reason=SERVICE_NOT_FOUND domain=aiplatform.v1 ") for line in lines), output


async def test_go_example_sends_its_api_key_to_a_gateway_with_keys(go_example: Path, tmp_path: Path) -> None:
    async with running_gateway(keyed_gateway_env(tmp_path), tmp_path) as gateway:
        example = [str(go_example), "-target", gateway.target]
        from_environment = await run_timed(example, gateway_env(AIP_API_KEY=ALPHA_KEY))
        # The flag wins over the variable.
        from_flag = await run_timed([*example, "-api-key", ALPHA_KEY], gateway_env(AIP_API_KEY=WRONG_KEY))
        without = await run_timed(example, gateway_env())
        wrong = await run_timed([*example, "-api-key", WRONG_KEY], gateway_env())
        unsendable = await run_timed([*example, "-api-key", "aip_secret\x01"], gateway_env())

    for code, timed_lines, stderr in (from_environment, from_flag):
        lines = [line for _, line in timed_lines]
        assert code == 0, f"the Go example exited {code}\nstdout:\n{lines}\nstderr:\n{stderr}"
        assert "service echo type=chat provider=echo ready=true" in lines
        assert "finish FINISH_REASON_STOP output_tokens=3" in lines  # the streaming call
        assert any(line.startswith("error info reason=SERVICE_NOT_FOUND ") for line in lines)
    for code, timed_lines, stderr in (without, wrong):
        assert (code, timed_lines) == (1, []), stderr
        assert stderr.startswith("example: ListServices: rpc error: code = Unauthenticated desc = "), stderr
        assert WRONG_KEY not in stderr
    assert "a caller key is required" in without[2]
    assert "the caller key is not valid" in wrong[2]
    # A key gRPC metadata cannot carry fails the call in the client, without repeating the key.
    code, timed_lines, stderr = unsendable
    assert (code, timed_lines) == (1, []), stderr
    assert "code = Unauthenticated" in stderr and "printable ASCII" in stderr, stderr
    assert "secret" not in stderr


def test_committed_go_code_matches_protos(tmp_path: Path) -> None:
    """Like `make check-proto` for Python: clients/go/generate.sh must make exactly what is committed."""
    absent = [tool for tool in ("protoc", "protoc-gen-go", "protoc-gen-go-grpc") if shutil.which(tool) is None]
    if absent:
        toolchain_missing(
            f"no {', '.join(absent)} on PATH", "clients/go's generated code was NOT checked against protos/"
        )
    generated = subprocess.run(
        [str(GO_CLIENT / "generate.sh"), str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert generated.returncode == 0, f"clients/go/generate.sh failed:\n{generated.stderr}"

    fresh = {path.relative_to(tmp_path) for path in tmp_path.rglob("*.go")}
    committed = {path.relative_to(GO_CLIENT) for path in GO_CLIENT.rglob("*.pb.go")}
    assert fresh, "generate.sh wrote no Go files"
    assert fresh == committed, f"generated files differ: run clients/go/generate.sh and commit ({fresh ^ committed})"
    for relative in sorted(fresh):
        new, old = (tmp_path / relative).read_text(), (GO_CLIENT / relative).read_text()
        diff = "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), "committed", "regenerated"))
        assert not diff, f"clients/go/{relative} is stale: run clients/go/generate.sh and commit\n{diff[:3000]}"
