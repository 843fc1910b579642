"""End to end: an owner's allowlist extension works from the scientist's side (docs/allowlist.md).

The extended owner is its own process (tests/peers/owner.py ``--extend-allowlist``) over real WebRTC; its
welcome describes its tables, and the scientist (this process) checks calls against them. A default owner
(in this process) still gets the same calls refused on the scientist's side, before anything is sent; and
an owner whose welcome describes its allowlist badly leaves the scientist on the default tables, working.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from conftest import Peer, owner_and_scientist

import duet

VALUES = [0.1, 0.5, -0.3, 0.9]
EXTENSION = {  # none of these is on the default allowlist
    "functions": ["torch.special.erf"],
    "methods": {"Tensor": ["erfinv"]},
    "properties": {"Tensor": ["nbytes"]},
}

SETUP = """
d.store.publish(torch.tensor(VALUES), name="v", tags=["#v"])
d.requests.add_handler(name="ok", action="accept")
"""


def get(ptr: Any) -> Any:
    return ptr.get(request_block=True, name="ok", timeout_secs=20)


def close(a: Any, b: Any) -> bool:
    return torch.allclose(torch.as_tensor(a), torch.as_tensor(b), atol=1e-6)


@pytest.fixture(scope="module")
def extended(signaling_url: str) -> Iterator[tuple[Peer, duet.Duet]]:
    extend = ("--extend-allowlist", json.dumps(EXTENSION))
    with owner_and_scientist(
        signaling_url, f"VALUES = {VALUES!r}", SETUP, name="alice", owner_args=extend
    ) as pair:
        yield pair


@pytest.fixture
def default_owner(signaling_url: str) -> Iterator[duet.Duet]:
    d = duet.launch_duet(signaling_url=signaling_url, quiet=True)
    try:
        d.store.publish(torch.tensor(VALUES), name="v")
        d.requests.add_handler(name="ok", action="accept")
        yield d
    finally:
        d.close()


def test_the_owners_added_function_method_and_property_work(extended: tuple[Peer, duet.Duet]) -> None:
    _, d = extended
    x, local = d.store["v"], torch.tensor(VALUES)
    assert close(get(d.torch.special.erf(x)), torch.special.erf(local))
    assert close(get(x.erfinv()), local.erfinv())  # a published pointer: its metadata says Tensor
    assert close(get((x * 0.5).erfinv()), (local * 0.5).erfinv())  # a pipelined result: no metadata yet
    assert close(get(d.torch.special.erf(x).erfinv()), local)
    assert get(x.nbytes) == local.nbytes == 16


def test_the_owner_still_refuses_what_it_did_not_add(extended: tuple[Peer, duet.Duet]) -> None:
    owner, d = extended
    x = d.store["v"]
    with pytest.raises(duet.PermissionDenied, match="torch.special.erfc is not on the allowlist"):
        d.torch.special.erfc(x)
    with pytest.raises(duet.PermissionDenied, match="Tensor.erfc is not on the allowlist"):
        x.erfc()
    # the owner is the authority: a call sent past the client's check is refused there, and logged
    sent = d._scientist.remote.call("torch.special.erfc", (x,), {})  # type: ignore[union-attr]
    with pytest.raises(duet.PermissionDenied, match="torch.special.erfc is not on the allowlist"):
        get(sent)
    owner.send("eval [r[0] for r in d.log.pandas[['path']].values.tolist()][-3:]")
    assert "torch.special.erfc" in json.loads(" ".join(owner.expect("VAL")[1:]))


def test_a_default_owner_refuses_them_on_the_scientists_side(
    signaling_url: str, default_owner: duet.Duet
) -> None:
    d = duet.join_duet(default_owner.session_id, signaling_url=signaling_url, name="bob")
    try:
        remote = d._scientist.remote  # type: ignore[union-attr]
        x = d.store["v"]
        sent = remote.ops_sent
        with pytest.raises(duet.PermissionDenied, match="torch.special is not on the allowlist"):
            d.torch.special.erf(x)
        with pytest.raises(duet.PermissionDenied, match="Tensor.erfinv is not on the allowlist"):
            x.erfinv()
        with pytest.raises(duet.PermissionDenied, match="Tensor.nbytes is not on the allowlist"):
            x.nbytes  # noqa: B018 - the read is the test
        assert remote.ops_sent == sent  # refused before anything was sent
        assert close(get(d.torch.erf(x)), torch.tensor(VALUES).erf())  # the default allowlist's own erf
    finally:
        d.close()


@pytest.mark.parametrize(
    "allowlist",
    [{"functions": "all of torch"}, ["torch.special.erf"], {"functions": ["os.system"] * 3}],
    ids=["a field of the wrong type", "not an object", "paths outside torch"],
)
def test_a_bad_welcome_leaves_the_scientist_on_the_default_tables(
    signaling_url: str, default_owner: duet.Duet, allowlist: Any, caplog: pytest.LogCaptureFixture
) -> None:
    assert default_owner._owner is not None
    default_owner._owner._welcome = {"t": "welcome", "allowlist": allowlist}  # an owner that sends garbage
    d = duet.join_duet(default_owner.session_id, signaling_url=signaling_url, name="carol")
    try:
        assert "pre-checking calls against the default allowlist" in caplog.text
        x = d.store["v"]
        with pytest.raises(duet.PermissionDenied, match="torch.special is not on the allowlist"):
            d.torch.special.erf(x)
        assert close(get(x.sum()), sum(VALUES))
    finally:
        d.close()
