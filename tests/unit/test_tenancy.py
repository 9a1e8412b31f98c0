"""coscale.tenancy without HTTP: reading and hashing keys, the limiter, `coscale keys new`,
and the TenantSpec fields behind them."""

from __future__ import annotations

import gc
import hmac
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from coscale import tenancy
from coscale.clock import ManualClock
from coscale.config import Scenario, scenario_from_dict
from coscale.errors import CoscaleError, ScenarioError
from coscale.tenancy import (
    ADMIN,
    ADMIN_KEY_ENV,
    MIN_KEY_CHARS,
    KeyRing,
    MissingKey,
    Principal,
    TenantAuth,
    TenantLimiter,
    default_key_env,
    new_key,
)

KEY_A = "alice-key-0123456789abcdef"
KEY_B = "bob-key-0123456789abcdefgh"
KEY_ADMIN = "admin-key-0123456789abcdef"


def scenario(*tenants: dict[str, Any], base: Path | None = None) -> Scenario:
    return scenario_from_dict(
        {
            "name": "t",
            "models": [
                {"name": "digits", "source": "digits-cnn", "slo_ms": 100, "accuracy_floor": 0}
            ],
            "tenants": list(tenants),
            "workload": {"generator": {"kind": "poisson", "rate_rps": 1, "duration_s": 1}},
        },
        base_dir=base,
    )


TWO = (
    {"name": "alice", "key_env": "ALICE_KEY"},
    {"name": "bob", "weight": 2},  # default variable COSCALE_KEY_BOB
)


# --------------------------------------------------------------------------- reading keys


def test_keys_come_from_key_env_and_the_default_variable() -> None:
    ring = KeyRing.from_scenario(scenario(*TWO), {"ALICE_KEY": KEY_A, "COSCALE_KEY_BOB": KEY_B})
    assert ring.authenticate(KEY_A) == Principal("alice")
    assert ring.authenticate(KEY_B) == Principal("bob")
    assert ring.authenticate(KEY_A + "x") is None and ring.authenticate("") is None
    assert len(ring) == 2 and not ring.has_admin


def test_default_key_env() -> None:
    assert default_key_env("batch-jobs.v2") == "COSCALE_KEY_BATCH_JOBS_V2"
    assert default_key_env("a_1") == "COSCALE_KEY_A_1"


def test_key_file_is_read_and_stripped(tmp_path: Path) -> None:
    (tmp_path / "a.key").write_text(KEY_A + "\n")
    s = scenario({"name": "alice", "key_file": "a.key"}, base=tmp_path)
    assert KeyRing.from_scenario(s, {}).authenticate(KEY_A) == Principal("alice")


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"COSCALE_KEY_BOB": KEY_B}, ["tenant 'alice'", "ALICE_KEY", "unset or empty"]),
        ({"ALICE_KEY": "  ", "COSCALE_KEY_BOB": KEY_B}, ["tenant 'alice'", "ALICE_KEY"]),
        ({"ALICE_KEY": KEY_A}, ["tenant 'bob'", "COSCALE_KEY_BOB", "keys new bob"]),
        ({"ALICE_KEY": "short", "COSCALE_KEY_BOB": KEY_B}, ["5 characters", f"{MIN_KEY_CHARS}"]),
        ({"ALICE_KEY": "with space 0123456789", "COSCALE_KEY_BOB": KEY_B}, ["whitespace"]),
        ({"ALICE_KEY": KEY_A, "COSCALE_KEY_BOB": KEY_A}, ["same API key", "'alice'", "'bob'"]),
    ],
)
def test_a_missing_or_bad_key_fails_at_startup_naming_tenant_and_variable(
    env: dict[str, str], words: list[str]
) -> None:
    with pytest.raises(MissingKey) as info:
        KeyRing.from_scenario(scenario(*TWO), env)
    text = info.value.render()
    assert info.value.code == "missing_key"
    for word in words:
        assert word in text
    for secret in env.values():
        if secret.strip():
            assert secret not in text  # a key is never echoed


def test_a_missing_key_file_names_the_tenant_and_the_file(tmp_path: Path) -> None:
    s = scenario({"name": "alice", "key_file": "nope.key"}, base=tmp_path)
    with pytest.raises(MissingKey, match=r"tenant 'alice'.*nope\.key.*does not exist"):
        KeyRing.from_scenario(s, {})
    (tmp_path / "nope.key").write_text("\n")
    with pytest.raises(MissingKey, match=r"key file .*nope\.key.* is unset or empty"):
        KeyRing.from_scenario(s, {})


def test_admin_key_from_the_environment() -> None:
    env = {"ALICE_KEY": KEY_A, "COSCALE_KEY_BOB": KEY_B, ADMIN_KEY_ENV: KEY_ADMIN}
    ring = KeyRing.from_scenario(scenario(*TWO), env)
    assert ring.has_admin and ring.authenticate(KEY_ADMIN) == ADMIN
    with pytest.raises(MissingKey, match=ADMIN_KEY_ENV):
        KeyRing.from_scenario(scenario(*TWO), {**env, ADMIN_KEY_ENV: "tiny"})
    with pytest.raises(MissingKey, match="same API key"):
        KeyRing.from_scenario(scenario(*TWO), {**env, ADMIN_KEY_ENV: KEY_A})


# --------------------------------------------------------------------------- storage


def _reachable(root: object, limit: int = 10_000) -> list[object]:
    """Every object reachable from ``root`` through gc referents (modules excluded)."""
    seen: dict[int, object] = {}
    stack = [root]
    while stack and len(seen) < limit:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, type(os) | type):
            continue
        seen[id(obj)] = obj
        stack.extend(gc.get_referents(obj))
    return list(seen.values())


def test_keys_are_kept_only_as_salted_hashes() -> None:
    env = {"ALICE_KEY": KEY_A, "COSCALE_KEY_BOB": KEY_B, ADMIN_KEY_ENV: KEY_ADMIN}
    auth = TenantAuth.from_scenario(scenario(*TWO), clock=ManualClock(), env=env)
    objects = _reachable(auth)
    digests = {id(e.digest) for e in auth.keys._entries}
    assert digests <= {id(o) for o in objects}  # the walk did reach every entry
    for key in (KEY_A, KEY_B, KEY_ADMIN):
        for obj in objects:
            if isinstance(obj, str):
                assert key not in obj
            elif isinstance(obj, bytes | bytearray):
                assert key.encode() not in obj
    salts = [e.salt for e in auth.keys._entries]
    assert len(set(salts)) == 3 and all(len(s) == tenancy.SALT_BYTES for s in salts)


def test_the_same_key_hashes_differently_in_two_rings() -> None:
    one = KeyRing([(Principal("a"), KEY_A)])._entries[0]
    two = KeyRing([(Principal("a"), KEY_A)])._entries[0]
    assert one.digest != two.digest


def test_every_entry_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    ring = KeyRing([(Principal("a"), KEY_A), (Principal("b"), KEY_B), (ADMIN, KEY_ADMIN)])
    monkeypatch.setattr(tenancy.hmac, "compare_digest", spy)
    assert ring.authenticate(KEY_A) == Principal("a")  # the first entry matches...
    assert len(calls) == 3  # ...and the others are still compared (no early exit)
    assert all(isinstance(a, bytes) and len(a) == 32 for a, _ in calls)


def test_new_keys_are_long_random_and_accepted() -> None:
    keys = {new_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(len(k) == 43 for k in keys)
    KeyRing([(Principal(str(i)), k) for i, k in enumerate(keys)])  # all valid, all distinct


# --------------------------------------------------------------------------- limiter


def test_limiter_rate_limit_and_quota_on_a_manual_clock() -> None:
    clock = ManualClock(1000.0)
    tenants = scenario(
        {"name": "alice", "rate_limit_rps": 2, "rate_burst": 2},
        {"name": "bob", "quota_requests": 2, "quota_period_s": 60},
        {"name": "carol"},
    ).tenants
    limiter = TenantLimiter(tenants, clock.now())
    now = clock.now()
    assert limiter.check("alice", now, inference=True) is None
    assert limiter.check("alice", now, inference=False) is None
    refusal = limiter.check("alice", now, inference=True)
    assert refusal is not None and refusal.code == "rate_limited"
    assert refusal.retry_after_s == pytest.approx(0.5) and "2 requests/s" in refusal.message
    clock.advance(0.5)
    assert limiter.check("alice", clock.now(), inference=True) is None
    # bob: only inference requests count against the quota
    for _ in range(5):
        assert limiter.check("bob", clock.now(), inference=False) is None
    assert limiter.check("bob", clock.now(), inference=True) is None
    assert limiter.check("bob", clock.now(), inference=True) is None
    refusal = limiter.check("bob", clock.now(), inference=True)
    assert refusal is not None and refusal.code == "quota_exceeded"
    assert refusal.retry_after_s == pytest.approx(59.5) and "per 60 s" in refusal.message
    assert limiter.remaining_quota("bob", clock.now()) == 0
    clock.advance(59.5)
    assert limiter.check("bob", clock.now(), inference=True) is None
    # carol: no limits at all
    assert all(limiter.check("carol", clock.now(), inference=True) is None for _ in range(1000))
    assert limiter.remaining_quota("carol", clock.now()) is None


def test_a_request_refused_by_the_quota_takes_no_token() -> None:
    tenants = scenario({"name": "a", "rate_limit_rps": 1, "rate_burst": 3, "quota_requests": 1})
    limiter = TenantLimiter(tenants.tenants, 0.0)
    assert limiter.check("a", 0.0, inference=True) is None  # token 1, quota 1
    refusal = limiter.check("a", 0.0, inference=True)
    assert refusal is not None and refusal.code == "quota_exceeded"
    assert "does not renew" in refusal.message and refusal.retry_after_s == float("inf")
    # two tokens are left: the refused request did not take one
    assert limiter.check("a", 0.0, inference=False) is None
    assert limiter.check("a", 0.0, inference=False) is None
    refusal = limiter.check("a", 0.0, inference=False)
    assert refusal is not None and refusal.code == "rate_limited"


# --------------------------------------------------------------------------- schema


@pytest.mark.parametrize(
    ("tenant", "words"),
    [
        ({"name": "a", "rate_burst": 5}, "tenants[0].rate_burst: rate_burst is set without"),
        ({"name": "a", "quota_period_s": 5}, "quota_period_s is set without quota_requests"),
        ({"name": "a", "rate_limit_rps": float("inf")}, "tenants[0].rate_limit_rps"),
        ({"name": "a", "rate_limit_rps": 1, "rate_burst": 0.5}, "must be >= 1"),
        ({"name": "a", "quota_requests": 0}, "tenants[0].quota_requests: must be >= 1"),
    ],
)
def test_limit_fields_are_validated(tenant: dict[str, Any], words: str) -> None:
    with pytest.raises(ScenarioError) as info:
        scenario(tenant)
    assert words in info.value.message


def test_limit_fields_are_described_in_the_schema() -> None:
    props = Scenario.model_json_schema()["$defs"]["TenantSpec"]["properties"]
    for name in ("rate_limit_rps", "rate_burst", "quota_requests", "quota_period_s", "key_env"):
        assert props[name]["description"]
    assert "COSCALE_KEY_<NAME>" in props["key_env"]["description"]


# --------------------------------------------------------------------------- CLI


def _keys(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="300", NO_COLOR="1")
    return subprocess.run(
        [sys.executable, "-m", "coscale.cli", "keys", "new", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=cwd,
        check=False,
    )


def test_keys_new_prints_only_the_key_on_stdout_and_how_to_use_it(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: s\nmodels: [{name: m, source: digits-cnn, slo_ms: 10, accuracy_floor: 0}]\n"
        "tenants: [{name: alice, key_env: ALICE_KEY}, {name: bob, key_file: bob.key}]\n"
        "workload: {generator: {kind: poisson, rate_rps: 1, duration_s: 1}}\n"
    )
    done = _keys("alice", "--scenario", str(path))
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip()
    assert len(key) == 43 and "\n" not in key
    assert f"export ALICE_KEY={key}" in done.stderr
    KeyRing([(Principal("alice"), key)])  # a key the server accepts

    done = _keys("bob", "--scenario", str(path))
    assert done.returncode == 0 and "bob.key" in done.stderr

    done = _keys("carol")
    assert done.returncode == 0 and f"export COSCALE_KEY_CAROL={done.stdout.strip()}" in done.stderr

    done = _keys("--admin")
    assert done.returncode == 0 and f"export {ADMIN_KEY_ENV}=" in done.stderr

    done = _keys("alcie", "--scenario", str(path))
    assert done.returncode == 2 and "did you mean 'alice'" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    done = _keys("Not A Name")
    assert done.returncode == 2 and "not a tenant name" in done.stderr


def test_keys_new_needs_a_tenant_or_admin() -> None:
    with pytest.raises(CoscaleError, match="exactly one"):
        from coscale.tenancy_cli import new

        new(tenant=None, scenario=None, admin=False)
