"""`make breaking-proto` and `make proto-baseline` on a copy of the repository's protos, changed.

The protos as they are and a protos/ with an added field pass; a renumbered, renamed or retyped
field and a deleted RPC (which buf's WIRE_JSON category would let through) fail. The Makefile's own
targets run, on a copy holding Makefile, buf.yaml, protos/ and the committed baseline, with this
virtualenv's buf; buf needs no network (buf.yaml has no `deps`).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent.parent
PROTO = Path("protos/aiplatform/v1/aiplatform.proto")
BASELINE = Path(".ci/proto-baseline.yaml")


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """What `make breaking-proto` reads, copied from the repository."""
    for name in ("Makefile", "buf.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "protos", tmp_path / "protos")
    (tmp_path / BASELINE).parent.mkdir()
    shutil.copy(ROOT / BASELINE, tmp_path / BASELINE)
    return tmp_path


def _make(workdir: Path, target: str) -> subprocess.CompletedProcess[str]:
    """Run a Makefile target in ``workdir`` with this virtualenv's tools, without re-installing it."""
    make = shutil.which("make")
    assert make, "make is needed to run the Makefile's targets"
    stamp = f"{VENV}/.installed"
    return subprocess.run(
        [make, "-s", "-C", str(workdir), f"VENV={VENV}", "-o", stamp, target],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _edit(workdir: Path, old: str, new: str) -> None:
    proto = workdir / PROTO
    text = proto.read_text(encoding="utf-8")
    assert text.count(old) >= 1, f"{old!r} is not in {PROTO}: update this test's edit"
    proto.write_text(text.replace(old, new, 1), encoding="utf-8")


def _renumber_field(workdir: Path) -> None:
    _edit(workdir, "  string user_id = 4;\n", "  string user_id = 9;\n")


def _rename_field(workdir: Path) -> None:
    _edit(workdir, "  string user_id = 4;\n", "  string end_user_id = 4;\n")


def _retype_field(workdir: Path) -> None:
    _edit(workdir, "  string user_id = 4;\n", "  int64 user_id = 4;\n")


def _delete_rpc(workdir: Path) -> None:
    _edit(workdir, "  rpc ListServices(ListServicesRequest) returns (ListServicesResponse);\n", "")


def _add_field(workdir: Path) -> None:
    _edit(workdir, "  string chat_id = 8;\n}", "  string chat_id = 8;\n  string locale = 99;\n}")


def test_unchanged_protos_are_compatible_with_the_baseline(repo_copy: Path) -> None:
    result = _make(repo_copy, "breaking-proto")
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_added_field_is_compatible(repo_copy: Path) -> None:
    _add_field(repo_copy)
    result = _make(repo_copy, "breaking-proto")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        (_renumber_field, 'Previously present field "4" with name "user_id" on message "ChatRequest" was deleted'),
        (_rename_field, 'Field "4" on message "ChatRequest" changed name from "user_id" to "end_user_id"'),
        (_retype_field, 'on message "ChatRequest" changed type from "string" to "int64"'),
        (_delete_rpc, 'Previously present RPC "ListServices" on service "AIPlatformService" was deleted'),
    ],
    ids=["renumbered field", "renamed field", "retyped field", "deleted rpc"],
)
def test_an_incompatible_change_fails_breaking_proto(
    repo_copy: Path, change: Callable[[Path], None], complaint: str
) -> None:
    change(repo_copy)
    result = _make(repo_copy, "breaking-proto")
    assert result.returncode != 0, f"make breaking-proto passed a breaking change:\n{result.stdout}"
    assert complaint in result.stdout


def test_proto_baseline_records_a_compatible_change(repo_copy: Path) -> None:
    _add_field(repo_copy)
    assert "locale" not in (repo_copy / BASELINE).read_text(encoding="utf-8")
    result = _make(repo_copy, "proto-baseline")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "name: locale" in (repo_copy / BASELINE).read_text(encoding="utf-8")
    assert _make(repo_copy, "breaking-proto").returncode == 0


def test_proto_baseline_refuses_a_breaking_change(repo_copy: Path) -> None:
    before = (repo_copy / BASELINE).read_bytes()
    _delete_rpc(repo_copy)
    result = _make(repo_copy, "proto-baseline")
    assert result.returncode != 0, "make proto-baseline recorded a breaking change"
    assert "not recorded" in result.stdout
    assert (repo_copy / BASELINE).read_bytes() == before
